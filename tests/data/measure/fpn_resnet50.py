# Measurement recipe (not run by the tests): see tests/data/fpn_resnet50_torchvision.json for its output.
"""FPN on torchvision's ResNet-50: params, conv MACs (hooks), fvcore total, output shapes at 3x800x800."""
import json

import torch
import torchvision
from fvcore.nn import FlopCountAnalysis
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FeaturePyramidNetwork

torch.set_num_threads(2)
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        r = torchvision.models.resnet50(weights=None)
        self.body = IntermediateLayerGetter(r, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"})
        self.fpn = FeaturePyramidNetwork([256, 512, 1024, 2048], 256)
    def forward(self, x):
        return self.fpn(self.body(x))
m = Net().eval()
x = torch.randn(1, 3, 800, 800)
macs = 0
def hook(mod, i, o):
    global macs
    if isinstance(mod, nn.Conv2d):
        macs += o.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
for mod in m.modules():
    mod.register_forward_hook(hook)
with torch.no_grad():
    out = m(x)
fa = FlopCountAnalysis(m, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
res = {"params": sum(p.numel() for p in m.parameters()), "buffers": sum(b.numel() for b in m.buffers()),
       "macs": macs, "fvcore": int(fa.total()),
       "fvcore_by_operator": {k: int(v) for k, v in fa.by_operator().items()},
       "outputs": {k: list(v.shape) for k, v in out.items()},
       "torch": torch.__version__, "torchvision": torchvision.__version__}
print(json.dumps(res))
