"""load_config: YAML -> frozen LoaderConfig; each class of bad config names key, place and fix."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import warnings
from pathlib import Path

import pytest
import yaml

from fmq_loader.tools.build import build_dataset, build_from_config, loader_from_config
from fmq_loader.tools.config import LoaderConfig, dump_config, load_config
from fmq_loader.errors import ConfigError
from fmq_loader.loading.loader import FMQLoader

from _images import image_folder

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_file_matches_the_dataclass_defaults_and_comments_every_key():
    cfg = load_config(CONFIGS / "default.yaml")
    assert cfg == LoaderConfig()
    lines = (CONFIGS / "default.yaml").read_text().splitlines()
    keys = [ln for ln in lines if ln.startswith("  ") and not ln.strip().startswith(("-", "#"))]
    assert len(keys) == sum(len(dataclasses.fields(type(getattr(cfg, s))))
                            for s in ("loader", "queue", "dataset", "synth", "train", "bench"))
    assert all(" # " in ln for ln in keys), [ln for ln in keys if " # " not in ln]


@pytest.mark.parametrize("name", ["default.yaml", "imagenet_like.yaml", "cpu_small.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.source.endswith(name)


def test_imagenet_like_has_the_promised_pipeline():
    cfg = load_config(CONFIGS / "imagenet_like.yaml")
    names = [t.name for t in cfg.dataset.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert dict(cfg.dataset.transforms[0].params)["size"] == 224
    assert (cfg.loader.batch_size, cfg.loader.num_workers) == (64, 2)


def test_dump_config_round_trips():
    cfg = load_config(CONFIGS / "cpu_small.yaml")
    assert load_config(yaml.safe_load(dump_config(cfg))) == cfg


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_config().loader.batch_size = 3


def test_mapping_input_and_partial_sections_keep_defaults():
    cfg = load_config({"loader": {"batch_size": 8}, "queue": None})
    assert cfg.loader.batch_size == 8 and cfg.loader.num_workers == 2
    assert cfg.queue.extra_slabs == 4


def test_set_overrides_parse_values_as_yaml_and_win_over_the_file(tmp_path):
    path = write(tmp_path, "loader:\n  num_workers: 1\n")
    cfg = load_config(path, ["loader.num_workers=4", "loader.shuffle=false",
                             "loader.timeout=2.5", "dataset.extensions=[.jpg, .png]"])
    assert (cfg.loader.num_workers, cfg.loader.shuffle, cfg.loader.timeout) == (4, False, 2.5)
    assert cfg.dataset.extensions == (".jpg", ".png")
    assert load_config(path, {"loader.batch_size": 3}).loader.batch_size == 3


def test_unknown_key_names_file_line_and_closest_key(tmp_path):
    path = write(tmp_path, "loader:\n  batch_size: 8\n  num_wokers: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:3: unknown key 'loader\.num_wokers'; "
                                          r"did you mean 'loader\.num_workers'\?") as info:
        load_config(path)
    assert (info.value.path, info.value.line, info.value.key) == (path, 3, "loader.num_wokers")


def test_unknown_section_suggests_the_closest(tmp_path):
    path = write(tmp_path, "loader: {}\ndatset:\n  root: x\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: unknown section 'datset'; "
                                          r"did you mean 'dataset'\?"):
        load_config(path)


def test_unknown_transform_and_parameter_point_at_their_line(tmp_path):
    path = write(tmp_path, "dataset:\n  transforms:\n    - ToTensor\n"
                           "    - RandomResizedCrp: {size: 3}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:4: unknown transform 'RandomResizedCrp' in "
                                          r"dataset\.transforms\[1\]; did you mean "
                                          r"'RandomResizedCrop'\?"):
        load_config(path)
    path = write(tmp_path, "dataset:\n  transforms:\n    - Resize:\n        size: 64\n"
                           "        interp: bilinear\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:5: unknown parameter 'interp' of Resize .* "
                                          r"did you mean 'interpolation'\?"):
        load_config(path)


@pytest.mark.parametrize("text,pattern", [
    ("loader:\n  num_workers: -1\n",
     r"c\.yaml:2: loader\.num_workers must be an int >= 0, got -1 \(int\); use num_workers: 0"),
    ("loader:\n  batch_size: 0\n", r"c\.yaml:2: loader\.batch_size must be an int >= 1, got 0"),
    ("loader:\n  batch_size: '8'\n",
     r"loader\.batch_size must be an int >= 1, got '8' \(str\)"),
    ("loader:\n  shuffle: 'yes'\n", r"loader\.shuffle must be true or false, got 'yes' \(str\)"),
    ("\nloader:\n  timeout: -1\n", r"c\.yaml:3: loader\.timeout must be a number >= 0, got -1"),
    ("loader:\n  multiprocessing_context: spwan\n",
     r"loader\.multiprocessing_context must be one of .*, got 'spwan' .*did you mean 'spawn'"),
    ("dataset:\n  on_error: ignore\n",
     r"dataset\.on_error must be one of 'raise', 'skip', 'warn', got 'ignore'"),
    ("train:\n  momentum: 1.5\n", r"train\.momentum must be a number >= 0 and <= 1, got 1\.5"),
    ("synth:\n  size: [4, 4]\n", r"synth\.size must be \[width, height\], two ints >= 8"),
    ("dataset:\n  transforms:\n    - Normalize: {mean: [0.5], std: [0]}\n",
     r"c\.yaml:3: dataset\.transforms\[0\] Normalize: std must not contain zero"),
    ("dataset:\n  transforms:\n    - RandomResizedCrop: {size: -3}\n",
     r"c\.yaml:3: dataset\.transforms\[0\] RandomResizedCrop: size must be a positive int"),
    ("loader:\n  num_workers: 0\n  persistent_workers: true\n",
     r"c\.yaml:3: loader\.persistent_workers needs loader\.num_workers >= 1"),
    ("loader: 3\n", r"c\.yaml:1: section loader must be a mapping of keys, got 3"),
    ("- 1\n- 2\n", r"c\.yaml:1: a config must be a mapping of sections"),
])
def test_wrong_type_or_range_names_key_value_and_expectation(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("text,pattern", [
    ("loader:\n  batch_size: [1\n", r"c\.yaml:2:15: invalid YAML syntax, expected ',' or "
                                    r"'\]', but got '<stream end>' \(never closed\)"),
    ("loader:\n\tbatch_size: 1\n", r"c\.yaml:2:1: invalid YAML syntax, .*'\\t'"),
    ("loader:\n  a: 1\n a: 2\n", r"c\.yaml:3:\d+: invalid YAML syntax"),
])
def test_invalid_yaml_syntax_names_file_and_line(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("text,key,lines", [
    ("loader:\n  num_workers: 2\n  batch_size: 8\n  num_workers: 4\n", "loader.num_workers",
     (2, 4)),
    ("loader:\n  batch_size: 8\nqueue: {}\nloader:\n  num_workers: 1\n", "loader", (1, 4)),
    ("dataset:\n  transforms:\n    - Resize:\n        size: 32\n        size: 64\n",
     "dataset.transforms[0].Resize.size", (4, 5)),
    ("loader: {batch_size: 8, shuffle: true, batch_size: 16}\n", "loader.batch_size", (1, 1)),
])
def test_duplicate_key_is_refused_naming_the_key_and_both_lines(tmp_path, text, key, lines):
    """PyYAML keeps the last of two equal keys without a word; load_config refuses them."""
    path = write(tmp_path, text)
    first, second = lines
    at = f"at lines {first} and {second}" if first != second else f"both on line {first}"
    with pytest.raises(ConfigError, match=rf"c\.yaml:{second}: key {re.escape(repr(key))} "
                                          rf"appears twice, {at}; "
                                          r"YAML would silently keep only the second, so "
                                          r"delete one of them") as info:
        load_config(path)
    assert (info.value.path, info.value.line, info.value.key) == (path, second, key)


def test_merge_keys_still_override_without_a_duplicate_error(tmp_path):
    path = write(tmp_path, "loader:\n  <<: {batch_size: 8, num_workers: 1}\n  batch_size: 16\n")
    cfg = load_config(path)
    assert (cfg.loader.batch_size, cfg.loader.num_workers) == (16, 1)


def test_python_tags_are_refused_like_safe_load(tmp_path):
    path = write(tmp_path, "loader:\n  batch_size: !!python/object/apply:os.getpid []\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:2:\d+: invalid YAML syntax, .*python/object"):
        load_config(path)


def test_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config file: No such file"):
        load_config(tmp_path / "nope.yaml")
    path = write(tmp_path, "loader: {}\n")
    os.chmod(path, 0)
    try:
        if os.access(path, os.R_OK):  # running as root
            pytest.skip("root can read a mode-000 file")
        with pytest.raises(ConfigError, match=r"cannot read config file: Permission denied"):
            load_config(path)
    finally:
        os.chmod(path, 0o644)


@pytest.mark.parametrize("override,pattern", [
    ("loader.num_workers", r"--set loader\.num_workers: expected KEY=VALUE"),
    ("loader.numworkers=3", r"--set loader\.numworkers=3: unknown key 'loader\.numworkers'; "
                            r"did you mean 'loader\.num_workers'\?"),
    ("loadr.batch_size=3", r"unknown section 'loadr'; did you mean 'loader'\?"),
    ("loader.num_workers=x", r"--set loader\.num_workers=x: loader\.num_workers must be an int "
                             r">= 0, got 'x' \(str\)"),
    ("num_workers=2", r"override key must be SECTION\.KEY, got 'num_workers'; did you mean "
                      r"'loader\.num_workers'\?"),
])
def test_bad_overrides_name_the_override(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_a_conflict_an_override_or_flag_caused_points_at_it_not_at_the_file(tmp_path):
    path = write(tmp_path, "loader:\n  num_workers: 2\n  persistent_workers: true\n"
                           "train:\n  steps: 100\n  warmup_steps: 10\n")
    with pytest.raises(ConfigError, match=r"^--set loader\.num_workers=0: loader\.num_workers=0 "
                                          r"conflicts with loader\.persistent_workers: true "
                                          r"from .*c\.yaml:3, which needs num_workers >= 1; "
                                          r"use num_workers >= 1, or set "
                                          r"loader\.persistent_workers to false as well$") as info:
        load_config(path, ["loader.num_workers=0"])
    assert (info.value.path, info.value.line, info.value.key) == (None, None,
                                                                   "loader.num_workers")
    with pytest.raises(ConfigError, match=r"^--steps 5: train\.steps must be > "
                                          r"train\.warmup_steps, got 5 with warmup_steps 10 "
                                          r"from .*c\.yaml:6; use 11 steps or more"):
        load_config(path, flags={"train.steps": (5, "--steps 5")})
    # both from the file, or the dependent key overridden: the dependent key is blamed
    with pytest.raises(ConfigError, match=r"^--set train\.warmup_steps=200: "
                                          r"train\.warmup_steps must be < train\.steps"):
        load_config(path, ["train.warmup_steps=200"])
    # --set wins over a flag for the same key, as it did when flags were --set items
    assert load_config(path, ["train.steps=50"],
                       flags={"train.steps": (5, "--steps 5")}).train.steps == 50


def test_missing_dataset_root_points_at_the_key(tmp_path):
    path = write(tmp_path, f"dataset:\n  root: {tmp_path / 'absent'}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: dataset\.root '.*absent' does not exist; "
                                          r"create it with `fmq-loader make-dataset"):
        build_dataset(path)
    with pytest.raises(ConfigError, match=r"<defaults>: dataset\.root is not set"):
        build_dataset(None)


def test_build_from_config_generates_the_folder_and_loads_batches(tmp_path):
    cfg = {"loader": {"batch_size": 4, "num_workers": 1},
           "dataset": {"root": str(tmp_path / "gen"), "generate_if_missing": True,
                       "transforms": [{"Resize": {"size": [16, 16]}}, "PILToTensor"]},
           "synth": {"classes": 2, "per_class": 3, "size": [24, 16]}}
    with build_from_config(cfg) as loader:
        batches = list(loader)
    assert len(loader.dataset) == 6 and [len(y) for _, y in batches] == [4, 2]
    assert tuple(batches[0][0].shape) == (4, 3, 16, 16)


def test_from_config_applies_validated_keyword_overrides_and_passes_others(tmp_path):
    root = image_folder(tmp_path / "d", classes=2, per_class=3, size=(16, 16))
    dataset = build_dataset({"dataset": {"root": str(root), "transforms": ["PILToTensor"]}})
    seen = []

    def collate(items):
        seen.append(len(items))
        return len(items)

    with FMQLoader.from_config(dataset, CONFIGS / "default.yaml", num_workers=0,
                               batch_size=5, collate_fn=collate) as loader:
        assert list(loader) == [5, 1] and seen == [5, 1]
    with pytest.raises(ConfigError, match=r"override loader\.num_workers=-2: "
                                          r"loader\.num_workers must be an int >= 0"):
        loader_from_config(dataset, None, num_workers=-2)


def test_more_workers_than_cpus_warning_points_at_the_callers_line(tmp_path):
    """The warning pointed into build.py (build_from_config, from_config) or loader.py (at
    iter()), not at the line the user wrote."""
    too_many = len(os.sched_getaffinity(0)) + 1
    root = image_folder(tmp_path / "d", classes=2, per_class=2, size=(16, 16))
    cfg = {"loader": {"batch_size": 2, "num_workers": too_many},
           "dataset": {"root": str(root), "transforms": ["PILToTensor"]}}

    def caught(fn) -> list:
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            fn()
        got = [w for w in got if "this DataLoader will create" in str(w.message)]
        assert got, "no num_workers warning"
        return got

    with contextlib.ExitStack() as stack:
        loaders: list[FMQLoader] = []
        warned = caught(lambda: loaders.append(stack.enter_context(build_from_config(cfg))))
        warned += caught(lambda: loaders.append(stack.enter_context(
            FMQLoader.from_config(loaders[0].dataset, cfg))))
        warned += caught(lambda: next(iter(loaders[0])))  # warns again when workers start
    assert [w.filename for w in warned] == [__file__] * len(warned)


def test_from_config_names_the_nearest_keyword_for_a_misspelt_one():
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'num_wokers'; did you mean "
                                        r"'num_workers'\?"):
        FMQLoader.from_config(list(range(4)), CONFIGS / "default.yaml", num_wokers=2)
