"""Bring your own teacher: a diffusers `UNet2DModel` saved in a local folder as a core Denoiser.

`from_diffusers(folder)` reads the UNet and its scheduler config and returns a
`onestep.core.denoiser.Denoiser` that every onestep sampler, loss and distiller accepts:

    DDPM, DDIM and the other discrete-beta schedulers
        -> `VP.from_betas(betas)` built from the scheduler's own `alphas_cumprod` (float64), with
           time_input="index": core time t = (n + 1) / N is the scheduler's integer timestep n,
           alpha(t)^2 = alphas_cumprod[n], and the UNet sees n.
        prediction_type epsilon -> "eps", v_prediction -> "v" (sqrt(abar) eps - sqrt(1 - abar) x0,
        the same v as onestep's), sample -> "x0".
    FlowMatchEulerDiscreteScheduler (and FlowMatchHeunDiscreteScheduler)
        -> `RectifiedFlow()`: x_t = (1 - t) x0 + t noise with t = diffusers' sigma; the UNet sees
           timestep = sigma * num_train_timesteps; it predicts noise - x0, which is onestep's
           "velocity" dx_t/dt = -x0 + noise with the same sign. `shift` (static or dynamic) only
           moves where a sampler puts its sigmas, not what the network means at a given sigma,
           so any shift loads; a sampler picks its own grid.

The x0 of the Denoiser is the network's raw prediction: schedulers that clip or threshold their
"pred_original_sample" (DDPMScheduler's default clip_sample=True) do so as a sampling choice.
Class-conditional UNets (`num_class_embeds`) take the core `cond` as `class_labels`.
Nothing is downloaded: the folder must be local.
"""

from __future__ import annotations

import json
import math
from pathlib import Path as FilePath

import torch
from torch import Tensor, nn

from onestep.core.denoiser import Denoiser
from onestep.core.paths import VP, RectifiedFlow

__all__ = ["from_diffusers", "UNetAdapter", "PREDICTIONS"]

PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
UNET = "UNet2DModel"
SCHEDULER_CONFIG = "scheduler_config.json"


class UNetAdapter(nn.Module):
    """`(x, time, cond=None) -> tensor` around a diffusers UNet2DModel: `time` (B,) times
    `time_scale` is the UNet's timestep, `cond` its class_labels. With a learned variance
    (out_channels = 2 in_channels) only the first in_channels channels (the mean's prediction)
    are returned, as diffusers' schedulers split them. Inputs are cast to the UNet's dtype and the
    output back to the input's."""

    def __init__(self, unet: nn.Module, *, time_scale: float = 1.0, split_variance: bool = False):
        super().__init__()
        self.unet = unet
        self.time_scale = float(time_scale)
        self.split_variance = bool(split_variance)

    @property
    def config(self) -> dict:
        """What `from_config` rebuilds this adapter from: the UNet's own config (diffusers'
        config.json entries) and the adapter's settings. With it, core's save_model / load_model
        store a loaded diffusers teacher, and students made from it, like any onestep model."""
        unet = {k: list(v) if isinstance(v, tuple) else v
                for k, v in dict(self.unet.config).items() if not k.startswith("_")}
        return {"unet": unet, "time_scale": self.time_scale,
                "split_variance": self.split_variance}

    @classmethod
    def from_config(cls, config: dict) -> UNetAdapter:
        from diffusers import UNet2DModel

        return cls(UNet2DModel.from_config(config["unet"]), time_scale=config["time_scale"],
                   split_variance=config["split_variance"])

    @property
    def class_conditional(self) -> bool:
        return getattr(self.unet, "class_embedding", None) is not None

    def forward(self, x: Tensor, time: Tensor, cond=None) -> Tensor:
        if cond is None and self.class_conditional:
            raise ValueError("this UNet2DModel is class-conditional: pass cond (class labels)")
        if cond is not None and not self.class_conditional:
            raise ValueError("this UNet2DModel is unconditional (no num_class_embeds): cond must "
                             "be None")
        dtype = self.unet.dtype
        time = time.to(torch.float64) * self.time_scale if self.time_scale != 1.0 else time
        out = self.unet(x.to(dtype), time.to(dtype), class_labels=cond, return_dict=False)[0]
        if self.split_variance:
            out = out[:, : x.shape[1]]
        return out.to(x.dtype)


def _read_json(file: FilePath) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: cannot read it as JSON ({e})") from e


def _find_unet(folder: FilePath, subfolder: str | None) -> tuple[FilePath, list[FilePath]]:
    """(the UNet's folder, the folders where its scheduler config may be, in order)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such local folder (from_diffusers loads local "
                                "folders only; download a hub model first, e.g. with "
                                "huggingface_hub.snapshot_download)")
    if subfolder is not None:
        model = folder / subfolder
        if not model.is_dir():
            raise FileNotFoundError(f"{model}: no such folder (subfolder={subfolder!r} of "
                                    f"{folder})")
        return model, [folder / "scheduler", model, folder]
    index = folder / "model_index.json"
    if index.is_file():
        entry = _read_json(index).get("unet")
        if entry is None:
            raise ValueError(f"{folder}: the pipeline's model_index.json has no 'unet' entry; "
                             f"from_diffusers loads a {UNET}")
        name = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else entry
        if name != UNET:
            raise ValueError(f"{folder}: the pipeline's unet is a {name}, not a {UNET}")
        return folder / "unet", [folder / "scheduler"]
    return folder, [folder, folder.parent / "scheduler"]


def _check_unet_config(model: FilePath) -> None:
    file = model / "config.json"
    if not file.is_file():
        raise ValueError(f"{model}: no config.json, so no {UNET} here (pass a pipeline folder "
                         f"with model_index.json and unet/, or a folder saved by "
                         f"{UNET}.save_pretrained)")
    config = _read_json(file)
    name = config.get("_class_name")
    if name != UNET:
        raise ValueError(f"{model}: config.json describes a {name}, not a {UNET}")
    embedding = config.get("time_embedding_type", "positional")
    if embedding != "positional":
        raise ValueError(f"{model}: time_embedding_type={embedding!r} is not supported (only "
                         "'positional': 'fourier' takes log noise levels, 'learned' only "
                         "integer steps)")


def _scheduler_config(scheduler, folder: FilePath, candidates: list[FilePath]) -> dict:
    """The scheduler's config dict from `scheduler` (a diffusers scheduler, a dict, a folder or a
    JSON file) or from the first candidate folder that holds scheduler_config.json."""
    if scheduler is not None and hasattr(scheduler, "config") and not isinstance(scheduler, dict):
        config = dict(scheduler.config)
        config.setdefault("_class_name", type(scheduler).__name__)
        return config
    if isinstance(scheduler, dict):
        return dict(scheduler)
    if scheduler is not None:
        file = FilePath(scheduler)
        if file.is_dir():
            file = file / SCHEDULER_CONFIG
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no such scheduler config file")
        return _read_json(file)
    for c in candidates:
        if (c / SCHEDULER_CONFIG).is_file():
            return _read_json(c / SCHEDULER_CONFIG)
    where = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise FileNotFoundError(f"{folder}: no {SCHEDULER_CONFIG} (looked in {where}); pass "
                            "scheduler= a diffusers scheduler, its config dict, or the folder or "
                            "file of its config")


def _build_scheduler(config: dict, folder: FilePath):
    import diffusers

    name = config.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"{folder}: unknown scheduler class {name!r} in the scheduler config")
    return cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})


def _discrete_path(scheduler, name: str, folder: FilePath) -> VP:
    cfg = scheduler.config
    if cfg.get("timestep_type", "discrete") != "discrete":
        raise ValueError(f"{folder}: {name} with timestep_type={cfg['timestep_type']!r} feeds the "
                         "UNet a continuous noise level; only discrete timesteps are supported")
    if cfg.get("use_flow_sigmas", False):
        raise ValueError(f"{folder}: {name} with use_flow_sigmas is a flow-matching model; save "
                         "it with a FlowMatchEulerDiscreteScheduler config instead")
    abar = torch.as_tensor(scheduler.alphas_cumprod).to(torch.float64).flatten()
    n = cfg.get("num_train_timesteps", abar.numel())
    if abar.numel() != n:
        raise ValueError(f"{folder}: {name} has {abar.numel()} alphas_cumprod for "
                         f"num_train_timesteps={n}")
    if abar[-1] <= 0 and abar.numel() > 1:
        # zero terminal SNR (rescale_betas_zero_snr): abar = 0 has no finite logSNR; keep it
        # tiny instead, as DDIMScheduler does (2**-24)
        abar = abar.clone()
        abar[-1] = min(2.0**-24, 0.5 * abar[-2].item())
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return VP.from_betas(1.0 - abar / prev)


def from_diffusers(folder, *, subfolder: str | None = None, scheduler=None,
                   guidance: float = 1.0, null_class: int | None = None, device="cpu",
                   dtype: torch.dtype = torch.float32) -> Denoiser:
    """A core Denoiser for the diffusers `UNet2DModel` in the local `folder`.

    folder: a pipeline folder (model_index.json, unet/, scheduler/, as `DDPMPipeline
        .save_pretrained` writes) or a folder written by `UNet2DModel.save_pretrained`, with
        scheduler_config.json beside config.json or in a sibling scheduler/ folder.
    subfolder: the UNet's folder inside `folder` (its scheduler then in folder/scheduler,
        the subfolder or folder itself).
    scheduler: the scheduler when the folder has none: a diffusers scheduler, its config dict,
        or the folder or JSON file holding it.
    guidance, null_class: classifier-free guidance scale for a class-conditional UNet, and the
        class index it was trained with as "no class" (required when guidance != 1).
    device, dtype: where and in what precision the UNet runs (the Denoiser casts its inputs).
    """
    from diffusers import UNet2DModel

    folder = FilePath(folder).expanduser()
    model, candidates = _find_unet(folder, subfolder)
    _check_unet_config(model)
    config = _scheduler_config(scheduler, folder, candidates)
    sched = _build_scheduler(config, folder)
    name = type(sched).__name__
    unet = UNet2DModel.from_pretrained(str(model), local_files_only=True, torch_dtype=dtype,
                                       low_cpu_mem_usage=False)
    unet = unet.to(device=device).eval()
    for p in unet.parameters():
        p.requires_grad_(False)

    if name in FLOW_SCHEDULERS:
        if sched.config.get("invert_sigmas", False):
            raise ValueError(f"{folder}: {name} with invert_sigmas=True is not supported")
        path, prediction, time_input = RectifiedFlow(), "velocity", "t"
        time_scale = float(sched.config.num_train_timesteps)
    elif hasattr(sched, "alphas_cumprod"):
        kind = sched.config.get("prediction_type", "epsilon")
        if kind not in PREDICTIONS:
            raise ValueError(f"{folder}: unknown prediction_type {kind!r}; known: "
                             f"{list(PREDICTIONS)}")
        path, prediction, time_input = _discrete_path(sched, name, folder), PREDICTIONS[kind], \
            "index"
        time_scale = 1.0
    else:
        raise ValueError(f"{folder}: unsupported scheduler class {name}; supported: DDPM, DDIM and "
                         f"other discrete-beta schedulers, and {', '.join(FLOW_SCHEDULERS)}")

    c = unet.config
    learned = sched.config.get("variance_type") in ("learned", "learned_range")
    split = learned and c.out_channels == 2 * c.in_channels
    adapter = UNetAdapter(unet, time_scale=time_scale, split_variance=split)
    if not (isinstance(guidance, (int, float)) and math.isfinite(guidance)):
        raise ValueError(f"guidance must be a finite number, got {guidance!r}")
    if guidance != 1.0 and not adapter.class_conditional:
        raise ValueError(f"{folder}: guidance={guidance} needs a class-conditional UNet2DModel "
                         "(num_class_embeds); this one is unconditional")
    if guidance != 1.0 and null_class is None:
        raise ValueError(f"{folder}: guidance={guidance} needs null_class=, the class index the "
                         "UNet was trained with for 'no class'")
    return Denoiser(adapter, path, prediction=prediction, time_input=time_input,
                    guidance=guidance, null_cond=null_class)
