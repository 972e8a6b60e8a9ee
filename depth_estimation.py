"""Monocular depth for seed images: ZoeDepth (ZoeD_NK) through torch.hub, for users with internet access and
`timm` installed (an optional extra). Nothing here runs in the tests: hub downloads are impossible offline."""
from __future__ import annotations

import logging

import numpy as np

_log = logging.getLogger(__name__)
_model = None


def load_zoedepth(device: str = "cpu"):
    """ZoeD_NK with pretrained weights (downloads and caches them on first use)."""
    global _model
    if _model is None:
        import torch
        import timm  # noqa: F401  (ZoeDepth's backbone; fail early with a clear reason when missing)
        torch.hub.help("intel-isl/MiDaS", "DPT_BEiT_L_384", trust_repo=True)  # caches MiDaS, which ZoeDepth uses
        _model = torch.hub.load("isl-org/ZoeDepth", "ZoeD_NK", pretrained=True, trust_repo=True).eval()
    return _model.to(device)


def zoedepth_available() -> bool:
    try:
        load_zoedepth()
    except Exception as error:  # no timm, no network, incompatible versions: all mean "use the fallback"
        _log.warning("ZoeDepth unavailable (%s): seed depth comes from two-view geometry",
                     str(error).splitlines()[0] if str(error) else type(error).__name__)
        return False
    return True


def estimate_depth(rgb: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Metric depth (m) for an HxWx3 uint8 image, at the image's resolution."""
    import torch
    model = load_zoedepth(device)
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255).to(device)
    with torch.no_grad():
        depth = model.infer(image)
    return depth[0, 0].cpu().numpy().astype(np.float32)
