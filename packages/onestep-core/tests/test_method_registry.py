"""The torch-free method table (`onestep methods`) equals the live methods, entry by entry, so it
cannot drift from the configs: a change of a toy default's steps or of what a method reads fails
here until the registry says the same."""

import importlib
import pkgutil

import onestep.core.distill as distill
from onestep.core.cli_vector import needs_data
from onestep.core.distill import METHODS, toy_config, toy_steps
from onestep.core.method_registry import REGISTRY, describe


def test_registry_equals_the_live_methods():
    assert list(REGISTRY) == list(METHODS) and len(REGISTRY) == 18
    for name, info in REGISTRY.items():
        module = importlib.import_module(f"onestep.core.distill.{info.module}")
        config_class = getattr(module, info.config)
        distiller_class = getattr(module, info.distiller)
        assert METHODS[name] == (config_class, distiller_class, info.description), name
        config = toy_config(name)
        assert info.steps == toy_steps(name, config), name
        assert info.needs_data == needs_data(name, config), name
        assert describe(name) == info.description and "\n" not in info.description


def test_every_method_module_is_registered():
    found = {}
    for m in pkgutil.iter_modules(distill.__path__):
        module = importlib.import_module(f"onestep.core.distill.{m.name}")
        for name, entry in getattr(module, "METHODS", {}).items():
            found[name] = (m.name, *entry)
    assert set(found) == set(REGISTRY)
    for name, (module, config_class, distiller_class, description) in found.items():
        info = REGISTRY[name]
        assert (module, config_class.__name__, distiller_class.__name__, description) == \
            (info.module, info.config, info.distiller, info.description), name
