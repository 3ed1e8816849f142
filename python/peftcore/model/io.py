"""Adapter files: peftcore's own (save_adapter / load_adapter) and HF PEFT's
(to_peft / from_peft). A save is all or nothing as the next load sees it; loads
validate everything before touching the model, and a failed load leaves the model as
it was.

A save writes two files (weights, then config), each by an atomic rename. The weights
file carries the config text in its metadata and is the commit point: a crash before
its rename leaves the previous save whole, a crash after it leaves the new weights with
their own config, which is what the loaders read (the JSON beside them is for people
and for HF PEFT's own loader)."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Union

import torch
from torch import Tensor, nn

from .config import BoneConfig, LoraConfig, config_from_dict, matches
from .inject import (
    active_adapters,
    adapter_layers,
    adapter_names,
    adapter_sites,
    as_linear,
    check_adapter_name,
    delete_adapter,
    inject,
    is_conv1d,
    merge_layers,
    saved_modules,
    selected_places,
    site_layers,
    unmerge_layers,
)

PathLike = Union[str, os.PathLike]
CONFIG = "peftcore_config.json"
WEIGHTS = "adapter.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
SAVED = "modules_to_save."  # key prefix of the fully trained modules (heads) in our file
EMBEDDED_CONFIG = "peftcore_config"  # weights metadata: the config saved with these weights
MAX_CONFIG_BYTES = 16 << 20  # a config is a few KiB; refuse to read more than this


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_adapter(directory: Path, weights_name: str, tensors: dict[str, Tensor], config_name: str,
                   config: dict, metadata: dict[str, str] | None = None) -> None:
    """Writes the weights (with the config text in their metadata: the commit point),
    then the config JSON, each atomically (see the module's docstring)."""
    from safetensors.torch import save_file

    text = json.dumps(config, indent=2)
    meta = {**(metadata or {}), EMBEDDED_CONFIG: text}
    _atomic_write(directory / weights_name, lambda tmp: save_file(tensors, tmp, metadata=meta))
    _atomic_write(directory / config_name, lambda tmp: Path(tmp).write_text(text))


def _layer_params(layer: nn.Module) -> dict[str, Tensor]:
    """An adapter layer's own parameters (not its base layer's), by name."""
    return {n: p for n, p in layer.named_parameters() if not n.startswith("base_layer.")}


def _adapter_tensors(model: nn.Module, adapter_name: str, prefix: str = "") -> dict[str, Tensor]:
    out = {}
    for name, layer in site_layers(model, adapter_name).items():
        for pname, p in _layer_params(layer).items():
            out[f"{prefix}{name}.{pname}"] = p.detach().cpu().contiguous()
    return out


def _saved_module_tensors(model: nn.Module, config) -> dict[str, Tensor]:
    """The parameters of the modules trained in full (`modules_to_save`), by full name."""
    return {f"{name}.{pname}": p.detach().cpu().contiguous()
            for name, module in saved_modules(model, config).items() for pname, p in module.named_parameters()}


def _regular_file(path: Path) -> Path:
    """`path` if it is a regular file (after links): a FIFO would block a read forever
    and a device (/dev/zero) would never end."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from exc
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: not a regular file")
    return path


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file."""
    from safetensors import SafetensorError, safe_open

    _regular_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:  # one open for the header and the tensors
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (OSError, SafetensorError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc


def _parse_config(text: str, path: Path) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a readable JSON config ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a JSON object, got {type(data).__name__}")
    return data


def _read_json(path: Path) -> dict:
    """A config file: a regular file of at most MAX_CONFIG_BYTES holding a JSON object."""
    _regular_file(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{path}: not a readable JSON config ({exc})") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes, not an adapter config")
    return _parse_config(raw.decode("utf-8", errors="replace"), path)


def _saved_config(directory: Path, config_name: str, metadata: dict[str, str], weights: Path) -> dict:
    """The config saved with these weights (their metadata), else the JSON file (files
    written before the config travelled with the weights, or by another tool)."""
    if EMBEDDED_CONFIG not in metadata:
        return _read_json(directory / config_name)
    saved = _parse_config(metadata[EMBEDDED_CONFIG], weights)
    try:
        beside = _read_json(directory / config_name)
    except ValueError:
        beside = None
    if beside != saved:
        warnings.warn(f"{directory / config_name} differs from the config saved with {weights.name} (an "
                      f"interrupted save, or an edit); loading the config saved with the weights", stacklevel=3)
    return saved


def _chosen_adapter(model: nn.Module, adapter_name: str | None) -> tuple[str, object]:
    """(name, config) of the adapter to write: `adapter_name`, else the first active one."""
    names = adapter_names(model)
    if not names:
        raise ValueError("the model has no peftcore adapters (call peftcore.inject first)")
    name = adapter_name or (active_adapters(model) or names)[0]
    if name not in names:
        raise ValueError(f"no adapter named {name!r}; the model has {names}")
    return name, model.peftcore_adapters[name]


# ----------------------------------------------------------------------------- own format


def save_adapter(model: nn.Module, directory: PathLike, adapter_name: str | None = None) -> None:
    """Writes the adapters and the modules trained in full (`modules_to_save`, e.g. a
    classification head) as safetensors, and their config as JSON, to `directory`:
    the adapter named `adapter_name`, by default the first active one."""
    name, config = _chosen_adapter(model, adapter_name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = _adapter_tensors(model, name)
    tensors.update({SAVED + k: t for k, t in _saved_module_tensors(model, config).items()})
    _write_adapter(directory, WEIGHTS, tensors, CONFIG,
                   {"config": config.to_dict(), "adapter_name": name, "layers": sorted(site_layers(model, name))})


def _base_linear(model: nn.Module, name: str) -> nn.Linear:
    module = model.get_submodule(name)
    return as_linear(getattr(module, "base_layer", module))


def _check_tensors(tensors: dict[str, Tensor], model: nn.Module, names: list[str], config, source: Path,
                   key: Callable[[str, str], str]) -> None:
    """Every adapted layer has exactly the parameters `config` gives it, with their shapes."""
    shapes = {n: config.param_shapes(_base_linear(model, n).in_features, _base_linear(model, n).out_features, n)
              for n in names}
    expected = {key(n, p) for n in names for p in shapes[n]}
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        raise ValueError(f"{source}: checkpoint does not match the model: missing {missing[:4]}, "
                         f"unexpected {extra[:4]}")
    for n in names:
        for p, shape in shapes[n].items():
            t = tensors[key(n, p)]
            if not t.is_floating_point():
                raise ValueError(f"{source}: {key(n, p)} has dtype {t.dtype}; adapter weights must be floating point")
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"{source}: {key(n, p)} has shape {tuple(t.shape)}, the model needs {tuple(shape)}")


def _check_saved(saved: dict[str, Tensor], model: nn.Module, config, source: Path) -> None:
    """The fully trained modules' tensors (`modules_to_save`, by parameter name) belong to
    modules the config names and fit the model: a load writes nothing else."""
    params = dict(model.named_parameters())
    for n, t in saved.items():
        if not matches(n.rpartition(".")[0], config.modules_to_save):
            raise ValueError(f"{source}: holds {n}, but the adapter's modules_to_save "
                             f"({config.modules_to_save}) does not name its module")
        if n not in params or tuple(params[n].shape) != tuple(t.shape):
            have = tuple(params[n].shape) if n in params else "no such parameter"
            raise ValueError(f"{source}: saved module parameter {n} {tuple(t.shape)} does not match the model ({have})")


def _install(model: nn.Module, config, names: list[str], tensors: dict[str, Tensor],
             key: Callable[[str, str], str], adapter_name: str,
             saved: dict[str, Tensor] | None = None) -> nn.Module:
    """Puts adapter `adapter_name` at `names` (injecting it, adding it beside the
    model's other adapters, or overwriting its weights) and copies the weights, then
    the fully trained modules' (`saved`, by parameter name); undoes everything if it
    fails. Merged adapters are unmerged around the copy and merged again after, so a
    merged adapter that is overwritten ends merged with its new weights."""
    check_adapter_name(adapter_name)
    saved = saved or {}
    named = dict(model.named_parameters())
    registered = adapter_names(model)
    created = adapter_name not in registered
    if not created:
        missing = sorted(set(names) - set(site_layers(model, adapter_name)))
        if missing:
            raise ValueError(f"adapter {adapter_name!r} of the model has no layer at {missing[:4]}")
    current = {} if created else site_layers(model, adapter_name)
    overwritten = [p for n in names if n in current for p in _layer_params(current[n]).values()]
    backup = {id(p): (p, p.detach().clone()) for p in [named[n] for n in saved] + overwritten}
    grad_state = {n: p.requires_grad for n, p in named.items()}
    exact = dataclasses.replace(config, target_modules=list(names), exclude_modules=None)
    merged = [layer for layer in adapter_layers(model).values() if layer.merged]
    try:
        unmerge_layers(merged)
        if created:
            inject(model, exact, adapter_name)
            model.peftcore_adapters[adapter_name] = config
            if not registered:
                model.peftcore_config = config
        layers = site_layers(model, adapter_name)
        with torch.no_grad():
            for n in names:
                for pname, p in _layer_params(layers[n]).items():
                    p.copy_(tensors[key(n, pname)])
            for n, t in saved.items():
                named[n].copy_(t)
        merge_layers(merged)
    except BaseException:
        with torch.no_grad():
            for p, t in backup.values():
                p.copy_(t)
        if created and adapter_name in adapter_names(model):
            delete_adapter(model, adapter_name)
        for n, p in model.named_parameters():
            if n in grad_state:
                p.requires_grad_(grad_state[n])
        merge_layers([layer for layer in merged if not layer.merged])
        raise
    return model


def load_adapter(model: nn.Module, directory: PathLike, adapter_name: str | None = None) -> nn.Module:
    """Loads what `save_adapter` wrote as adapter `adapter_name` (default: the name it
    was saved under): injected on a model without adapters, added beside the other
    adapters (inactive; `set_adapter` activates it), or overwriting that adapter."""
    directory = Path(directory)
    tensors, metadata = _read_safetensors(directory / WEIGHTS)
    meta = _saved_config(directory, CONFIG, metadata, directory / WEIGHTS)
    try:
        config, names = config_from_dict(meta["config"]), list(meta["layers"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{directory / CONFIG}: malformed ({type(exc).__name__}: {exc})") from exc
    adapter_name = adapter_name or meta.get("adapter_name", "default")
    sites = adapter_sites(model)
    existing = site_layers(model, adapter_name)
    for n in names:
        try:
            module = model.get_submodule(n)
        except AttributeError as exc:
            raise ValueError(f"{directory}: the model has no module {n!r}") from exc
        if n not in sites and not (isinstance(module, nn.Linear) or is_conv1d(module)):
            raise ValueError(f"{directory}: module {n!r} is a {type(module).__name__}, not nn.Linear")
        if n in existing:
            have = {p: tuple(t.shape) for p, t in _layer_params(existing[n]).items()}
            base = _base_linear(model, n)
            if have != {p: tuple(s) for p, s in config.param_shapes(base.in_features, base.out_features, n).items()}:
                raise ValueError(f"{directory}: {n} already holds a different adapter ({have})")
    saved = {k[len(SAVED):]: t for k, t in tensors.items() if k.startswith(SAVED)}
    tensors = {k: t for k, t in tensors.items() if not k.startswith(SAVED)}
    _check_saved(saved, model, config, directory / WEIGHTS)
    key = lambda n, pname: f"{n}.{pname}"  # noqa: E731
    _check_tensors(tensors, model, names, config, directory / WEIGHTS, key)
    return _install(model, config, names, tensors, key, adapter_name, saved)


# ----------------------------------------------------------------------------- HF PEFT


_MISS_INIT = {"bone": True, "mini": "mini", "bat": "bat"}


def _peft_config(config, layers: dict[str, nn.Module]) -> dict:
    names = sorted(layers)
    common = {"task_type": None, "target_modules": names, "bias": "none", "inference_mode": True,
              "modules_to_save": list(config.modules_to_save) if config.modules_to_save else None,
              "base_model_name_or_path": None}
    if config.kind == "lora":
        # PEFT's one flag for HF Conv1D bases (GPT-2), whose weight is stored [in, out];
        # A and B have the same layout either way.
        conv1d = bool(layers) and all(hasattr(getattr(layer, "base_layer", None), "peftcore_source")
                                      for layer in layers.values())
        return {**common, "peft_type": "LORA", "r": config.r, "lora_alpha": config.alpha,
                "lora_dropout": config.dropout, "use_rslora": config.use_rslora, "fan_in_fan_out": conv1d,
                "init_lora_weights": True, "rank_pattern": dict(config.rank_pattern),
                "alpha_pattern": dict(config.alpha_pattern)}
    if config.kind == "bone":
        return {**common, "peft_type": "MISS", "r": config.r, "init_weights": _MISS_INIT[config.variant],
                "mini_r": config.mini_r, "miss_dropout": config.dropout}
    raise ValueError(f"to_peft writes LoRA and MiSS adapters; this model has {config.kind!r} adapters "
                     f"(HF PEFT has no Hydra)")


def to_peft(model: nn.Module, directory: PathLike, adapter_name: str | None = None) -> None:
    """Writes an HF PEFT adapter directory (LoRA or MiSS) that
    `peft.PeftModel.from_pretrained` loads onto the same base model, with the same
    outputs: the adapter named `adapter_name`, by default the first active one."""
    name, config = _chosen_adapter(model, adapter_name)
    peft_config = _peft_config(config, site_layers(model, name))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = _adapter_tensors(model, name, prefix=PEFT_PREFIX)
    # Fully trained modules (a classification head): PEFT keeps them under their plain
    # names and wraps them again on load.
    tensors.update({PEFT_PREFIX + n: t for n, t in _saved_module_tensors(model, config).items()})
    _write_adapter(directory, PEFT_WEIGHTS, tensors, PEFT_CONFIG, peft_config, metadata={"format": "pt"})


def _config_from_peft(cfg: dict, directory: Path):
    kind = cfg.get("peft_type")
    if kind != "LORA" and (cfg.get("rank_pattern") or cfg.get("alpha_pattern")):
        raise ValueError(f"{directory}: rank_pattern / alpha_pattern are read for LoRA adapters only")
    places = {"target_modules": cfg.get("target_modules"), "exclude_modules": cfg.get("exclude_modules"),
              "modules_to_save": cfg.get("modules_to_save") or None,
              "layers_to_transform": cfg.get("layers_to_transform"), "layers_pattern": cfg.get("layers_pattern")}
    if kind == "LORA":
        # fan_in_fan_out only says the base weight is stored [in, out] (HF Conv1D): the
        # injection tells Conv1D from nn.Linear by type, as PEFT does when the flag and
        # the module disagree, and A / B are laid out the same.
        if cfg.get("use_dora"):
            raise ValueError(f"{directory}: DoRA adapters are not supported yet")
        # Values as the file has them: LoraConfig checks their types ("4" or "yes" refused).
        return LoraConfig(r=cfg["r"], alpha=cfg.get("lora_alpha", cfg["r"]), dropout=cfg.get("lora_dropout", 0.0),
                          use_rslora=cfg.get("use_rslora", False), rank_pattern=cfg.get("rank_pattern") or {},
                          alpha_pattern=cfg.get("alpha_pattern") or {}, **places)
    if kind == "BONE":  # PEFT <= 0.16: MiSS's earlier name; no mini form and no dropout then
        return BoneConfig(r=cfg["r"], variant="bat" if cfg.get("init_weights", True) == "bat" else "bone", **places)
    if kind == "MISS":
        init = cfg.get("init_weights", True)
        variant = init if init in ("mini", "bat") else "bone"  # True / False: the bone form
        return BoneConfig(r=cfg["r"], variant=variant, mini_r=cfg.get("mini_r", 1), dropout=cfg.get("miss_dropout", 0.0),
                          **places)
    raise ValueError(f"{directory}: peft_type {kind!r} is not supported (this build reads LORA, MISS and BONE)")


def from_peft(model: nn.Module, directory: PathLike, adapter_name: str = "default") -> nn.Module:
    """Loads an HF PEFT LoRA or MiSS adapter directory (or a Bone one, MiSS's name before
    PEFT 0.17: `bone_block` keys) into peftcore layers on `model` as adapter
    `adapter_name` (beside the model's other adapters, if it has some)."""
    directory = Path(directory)
    weights = directory / PEFT_WEIGHTS
    if weights.exists():
        tensors, metadata = _read_safetensors(weights)
    else:
        metadata = {}
        try:
            tensors = torch.load(_regular_file(directory / "adapter_model.bin"), map_location="cpu",
                                 weights_only=True)
        except Exception as exc:
            raise ValueError(f"{directory}: no readable adapter_model.safetensors or .bin ({exc})") from exc
    peft_cfg = _saved_config(directory, PEFT_CONFIG, metadata, weights)
    peft_type = peft_cfg.get("peft_type")
    try:
        config = _config_from_peft(peft_cfg, directory)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{directory / PEFT_CONFIG}: malformed ({type(exc).__name__}: {exc})") from exc
    if peft_type == "BONE":  # same tensor, older key
        tensors = {k[: -len("bone_block")] + "miss_block" if k.endswith(".bone_block") else k: t
                   for k, t in tensors.items()}
    existing, fresh = selected_places(model, config)
    names = sorted(set(fresh) | set(existing))
    if not names:
        raise ValueError(f"{directory}: target_modules={config.target_modules!r} match no nn.Linear of the model")
    saved = _peft_saved_modules(tensors, model, config)
    _check_saved(saved, model, config, weights)
    key = lambda n, pname: f"{PEFT_PREFIX}{n}.{pname}"  # noqa: E731
    _check_tensors(tensors, model, names, config, weights, key)
    return _install(model, config, names, tensors, key, adapter_name, saved)


def _peft_saved_modules(tensors: dict[str, Tensor], model: nn.Module, config) -> dict[str, Tensor]:
    """Takes out of `tensors` the weights of PEFT's `modules_to_save` (a task head: PEFT
    saves them under the plain parameter name), by parameter name."""
    if not config.modules_to_save:
        return {}
    params = dict(model.named_parameters())
    saved = {}
    for k in list(tensors):
        name = k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else None
        if name in params and matches(name.rpartition(".")[0], config.modules_to_save):
            saved[name] = tensors.pop(k)
    return saved
