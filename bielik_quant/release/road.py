"""`release(config, out)`: a release recipe's stages in order, each stamped, skipped or resumed.

    out/data/      the cleaned, anonymised, quality-filtered corpus (one folder per step)
    out/pretrain/  the tokenizer, the training run (checkpoints) and the model it made
    out/sft/       the same for instruction tuning
    out/export/    one folder per format entry, the artifacts in it
    out/eval/      the reference cache, one row per measured candidate, results.json
    out/report/    table8/: the Table 8 report
    out/release/   <name>/: what a user uploads

Every stage's key hashes its settings and the content hashes of what it reads (the previous
stage's product among them); `bielik_quant.release.stamps` says when a stage is skipped, resumed
or started afresh. The verb (`bielik-quant release`, `demo`) is a thin layer over this function.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bielik_quant import __version__
from bielik_quant.release import stages
from bielik_quant.release.config import ReleaseConfig, check_environment
from bielik_quant.release.stamps import StageDir, digest, output_sha256
from calibration_data import BUILTIN
from quantize.registry import Progress
from training.settings import ConfigError

# (k, n, stage, what happens: "running", "resuming", "skipped" or "done"), for the display.
OnStage = Callable[[int, int, str, str], None]


def release(
    config: ReleaseConfig,
    out: Path,
    progress: Progress | None = None,
    on_stage: OnStage | None = None,
    from_stage: str | None = None,
) -> dict[str, Path]:
    """Run the recipe's stages into `out`; a stage whose inputs and settings have not changed
    since it last finished is skipped. `from_stage` re-runs that stage and every later one.
    Returns each stage's product (what the next stage read)."""
    names = config.stages()
    if from_stage is not None and from_stage not in names:
        raise ConfigError(f"--from {from_stage}: the recipe's stages are {', '.join(names)}")
    check_environment(config)  # before any work
    road = _Road(config, out.resolve(), progress)
    for k, name in enumerate(names, 1):
        forced = from_stage is not None and names.index(name) >= names.index(from_stage)
        material = road.key_material(name)
        key = digest(material)
        directory = StageDir(road.out / name)
        product = road.product(name)
        finished = None if forced else directory.finished(key, product)
        if finished is not None:
            road.hashes[name] = finished
            _tell(on_stage, k, len(names), name, "skipped")
            continue
        started = time.perf_counter()
        resume = directory.begin(key, fresh=forced)
        _tell(on_stage, k, len(names), name, "resuming" if resume else "running")
        road.run(name, directory.path)
        road.hashes[name] = directory.finish(
            key, product, {"stage": name, **material, "seconds": time.perf_counter() - started}
        )
        _tell(on_stage, k, len(names), name, "done")
    return {name: road.product(name) for name in names}


def _tell(on_stage: OnStage | None, k: int, n: int, name: str, status: str) -> None:
    if on_stage is not None:
        on_stage(k, n, name, status)


class _Road:
    def __init__(self, config: ReleaseConfig, out: Path, progress: Progress | None) -> None:
        self.config = config
        self.out = out
        self.progress = progress
        self.hashes: dict[str, str] = {}  # stage → content hash of its product

    # Where each stage's product lies (known before the stage runs) -------------------------

    def product(self, name: str) -> Path:
        c, directory = self.config, self.out / name
        if name == "data":
            assert c.data is not None
            return directory / (c.data.steps[-1] if c.data.steps else "input")
        if name == "pretrain":
            return directory / (f"{c.name}-base" if c.sft else c.name)
        if name == "sft":
            return directory / c.name
        if name == "export":
            return directory
        if name == "eval":
            return directory / "results.json"
        if name == "report":
            return directory / "table8"
        return directory / c.release_name

    def model(self) -> Path:
        """The checkpoint that is exported and is the eval's reference."""
        for name in ("sft", "pretrain"):
            if getattr(self.config, name) is not None:
                return self.product(name)
        return Path(self.config.model).resolve()

    def artifacts(self) -> list[Path]:
        assert self.config.export is not None
        return stages.export_artifacts(self.config.export, self.out / "export", self.model())

    # What each stage's key is made of ------------------------------------------------------

    def key_material(self, name: str) -> dict[str, Any]:
        c = self.config
        section = getattr(c, name)
        settings = stages.json_ready(dataclasses.asdict(section)) if section else {}
        inputs: dict[str, Any] = {"bielik-quant": __version__}
        if name == "data":
            assert c.data is not None
            inputs["sources"] = [_source_sha256(s) for s in c.data.sources]
            inputs["quality_model"] = (
                output_sha256(Path(c.data.quality_model)) if c.data.quality_model else None
            )
            inputs["corpus"] = _corpus_sha256()  # the quality classifier's labelled set too
        elif name in ("pretrain", "sft"):
            from training.config import recipe_path

            inputs["recipe"] = output_sha256(recipe_path(section.recipe))
            before = "data" if name == "pretrain" else "pretrain"
            if before in self.hashes:
                inputs[before] = self.hashes[before]
            if c.model and (name == "pretrain" or c.pretrain is None):
                inputs["model"] = output_sha256(Path(c.model))
            inputs["corpus"] = _corpus_sha256()
        elif name == "export":
            inputs["model"] = self._model_sha256()
            inputs["calibration"] = _source_sha256(c.export.calibration)  # type: ignore[union-attr]
        elif name == "eval":
            inputs["export"] = self.hashes["export"]
            inputs["model"] = self._model_sha256()
            inputs["text"] = _source_sha256(c.eval.text)  # type: ignore[union-attr]
        elif name == "report":
            inputs["eval"] = self.hashes["eval"]
        else:
            settings["name"] = c.release_name
            inputs.update({s: self.hashes[s] for s in ("export", "eval", "report")})
        return {"settings": settings, "inputs": inputs}

    def _model_sha256(self) -> str:
        for name in ("sft", "pretrain"):
            if name in self.hashes:
                return self.hashes[name]
        return output_sha256(Path(self.config.model))

    # The stages ----------------------------------------------------------------------------

    def run(self, name: str, directory: Path) -> None:
        c, progress = self.config, self.progress
        if name == "data":
            assert c.data is not None
            stages.run_data(c.data, directory, progress)
        elif name in ("pretrain", "sft"):
            section = getattr(c, name)
            changes: dict[str, Any] = {}
            if name == "pretrain":
                if c.model:
                    changes["model"] = c.model
                if c.data is not None:
                    changes["data"] = [str(self.product("data"))]
                if section.tokenizer_vocab:
                    changes["tokenizer"] = str(
                        stages.train_tokenizer(
                            self.product("data"), directory / "tokenizer", section.tokenizer_vocab
                        )
                    )
            else:
                changes["model"] = str(self.product("pretrain")) if c.pretrain else c.model
            stages.run_training(section, directory, self.product(name), changes, progress)
        elif name == "export":
            assert c.export is not None
            stages.run_export(c.export, directory, self.model(), progress)
        elif name == "eval":
            assert c.eval is not None
            stages.run_eval(c.eval, directory, self.model(), self.artifacts(), progress)
        elif name == "report":
            assert c.report is not None
            stages.run_report(c.report.formats, directory, self.product("eval"))
        else:
            stages.run_release(
                c.release, c.release_name, directory, self.artifacts(), self.product("eval"),
                self.product("report"),
            )  # fmt: skip


def _source_sha256(spec: str) -> str:
    """The built-in corpus's manifest hash, or a file's or folder's content hash."""
    return _corpus_sha256() if spec == BUILTIN else output_sha256(Path(spec))


def _corpus_sha256() -> str:
    import calibration_data

    return output_sha256(Path(calibration_data.__file__).parent / "data" / "manifest.json")
