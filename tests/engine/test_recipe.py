"""The engine recipe (engine/recipe.py): what besides the job decides its pixels, in each Result and PNG, and the
words /show uses when the running engine differs from the one that made an image."""
from __future__ import annotations

from dataclasses import replace

import diffusers
import torch

from engine.png import image_params, read_png_params, save_png
from engine.recipe import EngineRecipe, current_recipe, device_kind
from engine.spec import JobSpec


def test_every_result_and_png_carries_the_engine_recipe(tiny_engine, tmp_path):
    result = tiny_engine.generate(JobSpec("a cat", seed=5, steps=1, width=256, height=256))
    recipe = EngineRecipe.from_dict(result.recipe)
    assert recipe == tiny_engine.recipe
    assert (recipe.fp8, recipe.compute, recipe.compile) == ("all-linear", "bf16", False)   # the CPU: eager bf16
    assert recipe.torch == torch.__version__.split("+")[0] and recipe.diffusers == diffusers.__version__
    assert recipe.device.startswith("cpu")
    path = tmp_path / "cat.png"
    save_png(result.images[0], path, image_params(result, 0))
    assert EngineRecipe.from_dict(read_png_params(path)["recipe"]) == recipe


def test_differences_name_what_changed_in_words():
    then = EngineRecipe(fp8="all-linear", compute="bf16", compile=False, torch="2.11.0", diffusers="0.42.1",
                        device="cuda sm_90")
    now = replace(then, compute="fp8", compile=True)
    assert now.differences(then) == ["matmul compute: fp8 now, bf16 then", "torch.compile: on now, off then"]
    assert then.differences(then) == []
    assert now.differences(None) == ["no engine recipe was recorded with the image"]
    assert EngineRecipe.from_dict({"fp8": "all-linear"}) is None and EngineRecipe.from_dict(None) is None
    assert "bf16 compute, eager" in then.text()


def test_an_fp8_job_recorded_before_kernels_were_named_differs_from_the_default_kernel_in_words():
    """Every fp8 job recorded so far ran the `row` kernel and its recipe says compute "fp8"; the default kernel is now
    `row-fast-tq` (other sums, other pixels), so /show and the PNG's recipe comparison must tell the two apart; and
    a job made with `row-fast` (the default of session 5) differs from it too."""
    versions = dict(torch=torch.__version__.split("+")[0], diffusers=diffusers.__version__, device=device_kind("cpu"))
    stored = {"fp8": "all-linear", "compute": "fp8", "compile": True, **versions}    # a job's recipe column as it is
    then = EngineRecipe.from_dict(stored)
    assert then is not None and then.compute == "fp8"                              # old records still read
    now = current_recipe("all-linear", "fp8", True, "cpu")                         # the default kernel
    assert now.compute == "fp8.row-fast-tq" and "fp8 (row-fast-tq) compute" in now.text()
    assert now.differences(then) == ["matmul compute: fp8 (row-fast-tq) now, fp8 then"]
    assert then.differences(now) == ["matmul compute: fp8 now, fp8 (row-fast-tq) then"]
    fast = EngineRecipe.from_dict({**stored, "compute": "fp8.row-fast"})
    assert now.differences(fast) == ["matmul compute: fp8 (row-fast-tq) now, fp8 (row-fast) then"]
    # an engine running `row` makes the recorded pixels again: its recipe is the stored one, word for word
    assert current_recipe("all-linear", "fp8", True, "cpu", kernel="row") == then
    assert current_recipe("all-linear", "bf16", True, "cpu").compute == "bf16"    # bf16 has no fp8 kernel
    assert EngineRecipe.from_dict(now.to_dict()) == now
