"""Release recipes and the loader they share with training recipes (training.settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bielik_quant.release.config import (
    ExportItem,
    ReleaseConfig,
    check_environment,
    load_release,
)
from tests.cli import invoke
from training.settings import ConfigError

MINIMAL = "name: m\nmodel: {model}\nexport: {{formats: [{{format: gguf, variants: [Q8_0]}}]}}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, "utf-8")
    return path


def test_sections_are_nested_dataclasses_and_overrides_reach_into_them(tmp_path: Path) -> None:
    recipe = write(tmp_path, MINIMAL.format(model="m") + "eval: {n_ctx: 256}\n")
    config = load_release(recipe, ["eval.chunks=4", "export.formats=[{format: hqq, "
                                   "variants: [4bit-g64]}]", "report={}"])  # fmt: skip
    assert config.eval is not None and (config.eval.n_ctx, config.eval.chunks) == (256, 4)
    assert config.export is not None
    assert config.export.formats == (ExportItem("hqq", ("4bit-g64",)),)
    assert config.stages() == ["export", "eval", "report"]
    assert load_release(recipe, ["eval=null"]).eval is None  # a stage can be switched off


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.n_ctxx=3", "unknown field eval.'n_ctxx' (did you mean eval.'n_ctx'?)"),
        ("export.n_ctx=many", "export.n_ctx must be an integer, got 'many'"),
        ("export.formats=[{format: hqq, variants: [4bit-g64], imatrix: true}]",
         "imatrix is a GGUF setting; hqq takes none"),
        ("export.formats=[{format: gguf, variants: [Q8_0, Q8_0]}]", "gguf Q8_0 is listed twice"),
        ("pretrain={recipe: tiny-pretrain, overrides: {lrr: 1}}", "did you mean 'lr'?"),
        ("sft={recipe: tiny-sft, overrides: {out: x}}", "may not set 'out'"),
        ("data={steps: [quality, clean]}", "data.steps must keep the order"),
        ("name=a/b", "name must be letters"),
        ("report={formats: [md]}", "keep csv in report.formats"),
    ],
)  # fmt: skip
def test_a_wrong_value_is_refused_naming_it(tmp_path: Path, override: str, message: str) -> None:
    recipe = write(tmp_path, MINIMAL.format(model="m") + "eval: {}\nrelease: {}\n")
    with pytest.raises(ConfigError) as error:
        load_release(recipe, [override])
    assert message in str(error.value)


def test_the_shipped_recipes_load() -> None:
    demo = load_release("demo")
    assert demo.stages() == ["data", "pretrain", "sft", "export", "eval", "report", "release"]
    assert demo.export is not None
    gguf = [i for i in demo.export.formats if i.format == "gguf"]
    assert {i.uses_imatrix for i in gguf} == {True, False}  # Table 8's with and without
    paper = load_release("bielik-7b")
    assert paper.pretrain is not None and paper.pretrain.recipe == "bielik-7b-cpt"
    with pytest.raises(ConfigError, match="is not a Hugging Face checkpoint directory"):
        check_environment(paper)  # its base checkpoint is the user's to give


def test_a_recipe_needs_something_to_export() -> None:
    with pytest.raises(ConfigError, match="nothing to export"):
        ReleaseConfig(name="m", export=load_release("demo").export)


def test_every_verb_explains_itself() -> None:
    import typer

    from bielik_quant.cli import app

    root = typer.main.get_command(app)
    verbs = [[name] for name in root.commands]  # type: ignore[attr-defined]
    verbs += [["data", name] for name in root.commands["data"].commands]  # type: ignore[attr-defined]
    assert {"release", "demo", "export", "eval", "report"} <= {v[0] for v in verbs}
    for verb in verbs:
        result = invoke(*verb, "--help")
        assert result.returncode == 0, (verb, result.stderr)
        assert "Usage" in result.stdout


def test_an_override_inside_a_mapping_keeps_its_other_keys(tmp_path: Path) -> None:
    recipe = write(
        tmp_path,
        MINIMAL.format(model="''") + "pretrain: {recipe: tiny-pretrain, tokenizer_vocab: 4096, "
        "overrides: {max_steps: 300, save_every: 50}}\ndata: {}\n",
    )
    config = load_release(recipe, ["pretrain.overrides.max_steps=1000"])
    assert config.pretrain is not None
    assert config.pretrain.overrides == {"max_steps": 1000, "save_every": 50}
