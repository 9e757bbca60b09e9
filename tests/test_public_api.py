"""``import tunescope`` is light and exposes one entry point per lens; ``tunescope.finetune`` is a module."""

from __future__ import annotations

import subprocess
import sys
import types

import tunescope


def test_every_public_name_resolves_to_its_module_object():
    for name in tunescope.__all__:
        value = getattr(tunescope, name)
        assert value is not None, name
        module = tunescope._LAZY.get(name)
        if module is not None:
            assert value is getattr(sys.modules[module], name)
    assert set(tunescope._LAZY) <= set(tunescope.__all__)


def test_each_lens_has_an_entry_point():
    lenses = {
        "similarity": ("cka_matrix", "find_blocks", "rsa"),
        "probing": ("LayerProbes", "probe_layers"),
        "variability": ("layer_variability", "select_layers"),
        "truncation": ("truncation_sweep",),
        "ffn": ("ffn_cka",),
        "surgery": ("truncate", "remove_ffn", "restore_layers", "reinit_layers", "freeze_layers"),
    }
    for module, names in lenses.items():
        for name in names:
            assert getattr(tunescope, name).__module__.startswith(f"tunescope.{module}"), name


def test_modules_are_not_shadowed_by_their_functions():
    import tunescope.extract
    import tunescope.finetune

    for module in (tunescope.finetune, tunescope.extract):
        assert isinstance(module, types.ModuleType)
    assert callable(tunescope.finetune.finetune) and callable(tunescope.extract.extract)


def test_submodules_are_reachable_from_a_bare_import():
    calls = "callable(tunescope.extract.extract), callable(tunescope.finetune.finetune)"
    code = f"import tunescope; print({calls})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


def test_import_tunescope_loads_neither_torch_nor_transformers():
    heavy = "('torch', 'transformers', 'matplotlib')"
    code = f"import sys, tunescope; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
