"""timm's GCViT (Hatamizadeh et al. 2023, "Global Context Vision Transformers"; timm/models/gcvit.py): refused, with
the reason, where a block cuts its grid into windows.

A stage of GCViT makes one window-sized grid of queries from its input (`global_block`: MBConv blocks and max pools,
the `FeatureBlock`) and passes it, beside the tokens, to every block. The even blocks attend within windows as Swin
does (qkv C -> 3C, timm's RelPosBias: a (2w-1)^2 x heads table gathered by a w^2 x w^2 index); the odd ones take
their queries from that grid (`WindowAttentionGlobal` with use_global: a kv projection C -> 2C, no query
projection, the grid repeated for every window of the image): an attention with two inputs, which no archcalc kind
takes yet (docs/tokens.md, "Global query attention (GCViT)"). Every GCViT has both, so the first block's window
view is refused with that reason rather than read and refused later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from archcalc.torch.importer.mapping import Unmapped, qualname

if TYPE_CHECKING:
    import torch.fx as fx
    from torch import nn

BLOCK = "timm.models.gcvit.GlobalContextVitBlock"


def refuse(root: nn.Module, node: fx.Node) -> None:
    """Unmapped at the first view of a GCViT block's window partition (x.view(B, H / w, w, W / w, w, C))."""
    if node.op != "call_method" or node.target != "view":
        return
    stack = node.meta.get("nn_module_stack") or {}
    last: Any = list(stack.values())[-1] if stack else None
    path = last[0] if isinstance(last, tuple) else str(last or "")
    if not path or qualname(type(root.get_submodule(path))) != BLOCK:
        return
    raise Unmapped("GCViT's windows: every other block is global query attention (timm's WindowAttentionGlobal: "
                   "keys and values from the window's tokens, C -> 2C, the queries the stage's window-sized grid "
                   "made by its FeatureBlock and shared by every window), an attention with two inputs that no "
                   "archcalc kind takes yet")
