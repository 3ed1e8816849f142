"""Putting adapters into a model, counting them, merging them out."""

from __future__ import annotations

import contextlib

from torch import nn

from ..layers import AdapterSet, BoneLinear, HydraLinear, LoraLinear
from .config import in_layers, matches

ADAPTER_LAYERS = (LoraLinear, HydraLinear, BoneLinear)
SITES = ADAPTER_LAYERS + (AdapterSet,)  # what stands where an adapted nn.Linear was


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def is_conv1d(module: nn.Module) -> bool:
    """HF transformers' Conv1D (GPT-2): a linear layer storing its weight as [in, out]."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2


def as_linear(module: nn.Module) -> nn.Linear:
    """An nn.Linear view of `module`: itself, or for a Conv1D one whose weight is the
    transposed view of the Conv1D's (shared storage, so merges write through)."""
    if not is_conv1d(module):
        return module
    n_in, n_out = module.weight.shape
    linear = nn.Linear(n_in, n_out, bias=module.bias is not None, device="meta")
    linear.weight = nn.Parameter(module.weight.t(), requires_grad=module.weight.requires_grad)
    if module.bias is not None:
        linear.bias = module.bias
    object.__setattr__(linear, "peftcore_source", module)  # put back by merge_and_unload; not a submodule
    return linear


def adapter_sites(model: nn.Module) -> dict[str, nn.Module]:
    """The adapted places of the model, by module name: an adapter layer, or an
    AdapterSet where several named adapters share one base layer."""
    sites, inside = {}, ()
    for name, module in model.named_modules():
        if inside and name.startswith(inside):
            continue
        if isinstance(module, SITES):
            sites[name] = module
            inside = tuple(f"{n}." for n in sites)
    return sites


def _selects(name: str, config) -> bool:
    return (matches(name, config.target_modules) and not matches(name, config.exclude_modules)
            and in_layers(name, config))


def selected_places(model: nn.Module, config) -> tuple[dict[str, nn.Module], list[str]]:
    """What `config` selects: the already-adapted places (by name), and the plain
    nn.Linear / Conv1D module names."""
    existing = {n: m for n, m in adapter_sites(model).items() if _selects(n, config)}
    return existing, target_names(model, config)


def target_names(model: nn.Module, config) -> list[str]:
    """The nn.Linear (or HF Conv1D) modules `config` selects (already-adapted places excluded)."""
    sites = adapter_sites(model)
    prefixes = tuple(f"{n}." for n in sites)
    return [name for name, module in model.named_modules()
            if name not in sites and not (prefixes and name.startswith(prefixes))
            and (isinstance(module, nn.Linear) or is_conv1d(module)) and _selects(name, config)]


def saved_modules(model: nn.Module, config) -> dict[str, nn.Module]:
    """The modules `config` trains in full (`modules_to_save`, e.g. a head), by name."""
    if not config.modules_to_save:
        return {}
    return {n: m for n, m in model.named_modules() if n and matches(n, config.modules_to_save)}


def _mark_modules_to_save(model: nn.Module, config) -> None:
    for module in saved_modules(model, config).values():
        module.requires_grad_(True)


def _no_match(config) -> ValueError:
    return ValueError(f"no nn.Linear matches target_modules={config.target_modules!r}")


def check_adapter_name(adapter_name) -> None:
    """An adapter name is a non-empty string without "." (it becomes a module key, as
    in PEFT); refused before anything changes."""
    if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
        raise ValueError(f"adapter_name must be a non-empty string without '.', got {adapter_name!r}")


def _build_all(model: nn.Module, config, names: list[str], bases: dict[str, nn.Module] | None = None):
    """[(name, layer)] for every name, built before the model changes. Building freezes
    the base layer, so a failure puts every parameter's requires_grad back."""
    grad_state = [(p, p.requires_grad) for p in model.parameters()]
    try:
        return [(name, _build(config, model, name, (bases or {}).get(name))) for name in names]
    except BaseException:
        for p, flag in grad_state:
            p.requires_grad_(flag)
        raise


def _build(config, model: nn.Module, name: str, base: nn.Module | None = None) -> nn.Module:
    """The config's adapter layer for the module at `name` (around `base`, by default
    that module), in the training mode of the module it replaces."""
    replaced = model.get_submodule(name)
    layer = config.make_layer(as_linear(replaced) if base is None else base, name)
    return layer.train(replaced.training)


def inject(model: nn.Module, config, adapter_name: str = "default") -> nn.Module:
    """Replaces each matching nn.Linear by the config's adapter layer (LoraLinear,
    HydraLinear or BoneLinear; in place), freezes every other parameter except
    `modules_to_save`, and returns the model. The adapter is named `adapter_name`
    and active. On a model that already has adapters this is `add_adapter`."""
    check_adapter_name(adapter_name)
    if adapter_names(model):
        return add_adapter(model, config, adapter_name)
    names = target_names(model, config)
    if not names:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"{_no_match(config)}; some Linear modules of this model: {linear[:6]}")
    layers = _build_all(model, config, names)  # a bad shape fails before the model changes
    for p in model.parameters():
        p.requires_grad_(False)
    for name, layer in layers:
        layer.adapter_name = adapter_name
        _set_submodule(model, name, layer)
    _mark_modules_to_save(model, config)
    model.peftcore_adapters = {adapter_name: config}
    model.peftcore_active = [adapter_name]
    model.peftcore_config = config
    return model


def adapter_names(model: nn.Module) -> list[str]:
    """The model's named adapters, in the order they were added."""
    return list(getattr(model, "peftcore_adapters", {}))


def active_adapters(model: nn.Module) -> list[str]:
    return list(getattr(model, "peftcore_active", []))


def site_layers(model: nn.Module, adapter_name: str) -> dict[str, nn.Module]:
    """The layers of one named adapter, by the name of the place they adapt."""
    out = {}
    for name, site in adapter_sites(model).items():
        if isinstance(site, AdapterSet):
            if adapter_name in site.adapters:
                out[name] = site.adapters[adapter_name]
        elif getattr(site, "adapter_name", "default") == adapter_name:
            out[name] = site
    return out


def _require_adapter(model: nn.Module, adapter_name: str):
    if adapter_name not in getattr(model, "peftcore_adapters", {}):
        raise ValueError(f"no adapter named {adapter_name!r}; the model has {adapter_names(model)}")
    return model.peftcore_adapters[adapter_name]


def _require_unmerged(model: nn.Module, what: str) -> None:
    if any(layer.merged for layer in adapter_layers(model).values()):
        raise RuntimeError(f"{what} needs the adapters unmerged: call peftcore.unmerge(model) first")


def add_adapter(model: nn.Module, config, adapter_name: str) -> nn.Module:
    """Adds a second (third, ...) named adapter, inactive, at the places `config`
    selects, already-adapted ones included; `set_adapter` activates it."""
    check_adapter_name(adapter_name)
    if not adapter_names(model):
        raise ValueError("the model has no adapters yet: use peftcore.inject(model, config, adapter_name)")
    if adapter_name in model.peftcore_adapters:
        raise ValueError(f"the model already has an adapter named {adapter_name!r}")
    _require_unmerged(model, "add_adapter")
    existing, fresh = selected_places(model, config)
    if not existing and not fresh:
        raise _no_match(config)
    made = _build_all(model, config, fresh + list(existing), {n: site.base_layer for n, site in existing.items()})
    for name, layer in made:  # built all first: a bad shape fails before the model changes
        layer.adapter_name, layer.active = adapter_name, False
        layer.requires_grad_(False)
        site = existing.get(name)
        if site is None:
            _set_submodule(model, name, layer)
        elif isinstance(site, AdapterSet):
            site.adapters[adapter_name] = layer
        else:
            adapter_set = AdapterSet(site.base_layer, {site.adapter_name: site, adapter_name: layer})
            _set_submodule(model, name, adapter_set.train(site.training))
    model.peftcore_adapters[adapter_name] = config
    return model


def set_adapter(model: nn.Module, adapter_names_: str | list[str]) -> None:
    """Makes these adapters (a name or a list) the active ones: they run and train;
    every other adapter is skipped and frozen."""
    names = [adapter_names_] if isinstance(adapter_names_, str) else list(adapter_names_)
    for name in names:
        _require_adapter(model, name)
    _require_unmerged(model, "set_adapter")
    for layer in adapter_layers(model).values():
        layer.active = getattr(layer, "adapter_name", "default") in names
        for pname, p in layer.named_parameters():
            if not pname.startswith("base_layer."):
                p.requires_grad_(layer.active)
    for name in names:
        _mark_modules_to_save(model, model.peftcore_adapters[name])
    model.peftcore_active = names
    model.peftcore_config = model.peftcore_adapters[names[0]] if names else model.peftcore_config


def _base_of(site: nn.Module) -> nn.Module:
    return getattr(site.base_layer, "peftcore_source", site.base_layer)


def _forget_adapters(model: nn.Module) -> None:
    for attr in ("peftcore_adapters", "peftcore_active", "peftcore_config"):
        if hasattr(model, attr):
            delattr(model, attr)


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Removes a named adapter everywhere (the base layers stay as they are)."""
    _require_adapter(model, adapter_name)
    if any(layer.merged for layer in site_layers(model, adapter_name).values()):
        raise RuntimeError(f"adapter {adapter_name!r} is merged: call peftcore.unmerge(model) first")
    for name, site in adapter_sites(model).items():
        if isinstance(site, AdapterSet):
            if adapter_name in site.adapters:
                del site.adapters[adapter_name]
            if len(site.adapters) == 1:
                _set_submodule(model, name, next(iter(site.adapters.values())))
        elif site.adapter_name == adapter_name:
            _set_submodule(model, name, _base_of(site))
    del model.peftcore_adapters[adapter_name]
    model.peftcore_active = [n for n in model.peftcore_active if n != adapter_name]
    if not model.peftcore_adapters:
        _forget_adapters(model)
    else:
        model.peftcore_config = model.peftcore_adapters[(model.peftcore_active or adapter_names(model))[0]]


def adapter_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every peftcore adapter layer of the model (of every named adapter), by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ADAPTER_LAYERS)}


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def print_trainable_parameters(model: nn.Module) -> None:
    trainable, total = trainable_parameters(model)
    print(f"trainable params: {trainable:,} || all params: {total:,} || "
          f"trainable%: {100 * trainable / max(total, 1):.4f}")


def _merge_order(layers) -> list[nn.Module]:
    """The order layers merge in: Hydra layers with a sequential branch first, because
    their merge maps the weight (W' = (I + S) W + ...) and must see the base weight
    alone, as their forward sees the base output alone; additive merges after. Unmerge
    runs the reverse."""
    return sorted(layers, key=lambda layer: 0 if getattr(layer, "A_s", None) is not None else 1)


def merge_layers(layers) -> None:
    for layer in _merge_order(layers):
        layer.merge()


def unmerge_layers(layers) -> None:
    for layer in reversed(_merge_order(layers)):
        layer.unmerge()


def _check_mergeable(model: nn.Module) -> None:
    """Two active sequential branches at one place have no exact merge by successive
    merges ((I + S1)(I + S2) W is not (I + S1 + S2) W): refused before any weight changes."""
    for name, site in adapter_sites(model).items():
        if isinstance(site, AdapterSet):
            sequential = [n for n, layer in site.adapters.items()
                          if layer.active and getattr(layer, "A_s", None) is not None]
            if len(sequential) > 1:
                raise ValueError(f"{name}: adapters {sequential} both have a sequential Hydra branch; "
                                 "they cannot be merged together (activate one of them to merge)")


def merge(model: nn.Module) -> None:
    """Folds the active adapters into their base weights."""
    _check_mergeable(model)
    merge_layers([layer for layer in adapter_layers(model).values() if layer.active])


def unmerge(model: nn.Module) -> None:
    """Undoes merge (in the reverse order: Hydra's merge is not a plain addition)."""
    unmerge_layers(list(adapter_layers(model).values()))


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Folds the active adapters into their base weights and puts the plain nn.Linear
    back everywhere (inactive adapters are dropped)."""
    merge(model)
    for name, site in adapter_sites(model).items():
        _set_submodule(model, name, _base_of(site))
    _forget_adapters(model)
    return model


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """``with peftcore.disable_adapters(model): ...`` runs the base model alone (adapters
    stay in place, merged ones are unmerged for the duration and merged back after)."""
    # Nested blocks: an inner block finds the sites already disabled (their forward
    # shadowed) and leaves them to the block that disabled them.
    sites = [site for site in adapter_sites(model).values() if "forward" not in vars(site)]
    merged = [layer for layer in adapter_layers(model).values() if layer.merged]
    unmerge_layers(merged)
    for site in sites:
        site.forward = site.base_layer.forward  # instance attribute shadows the method
    try:
        yield model
    finally:
        for site in sites:
            del site.forward
        merge_layers(merged)
