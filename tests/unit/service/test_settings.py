"""The configuration tree: every VAD_* variable defined once, validated at start-up with one line
naming the variable, shown by `vad serve --help`, and listed in docs/configuration.md."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service.cli import build_parser, main
from service.settings import (
    SECTIONS,
    TABLE_END,
    TABLE_START,
    Settings,
    SettingsError,
    all_settings,
    markdown_table,
    render_docs,
)

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for info in all_settings():
        monkeypatch.delenv(info.env, raising=False)


def test_every_variable_is_defined_once_with_a_description() -> None:
    infos = all_settings()
    assert len({i.env for i in infos}) == len(infos) == len({i.key for i in infos})
    assert all(i.env.startswith("VAD_") and i.description for i in infos)
    assert {i.section for i in infos} == set(SECTIONS)
    # The variables operators already use keep their names.
    names = {i.env for i in infos}
    assert {"VAD_PORT", "VAD_WEIGHTS", "VAD_BACKEND", "VAD_API_TOKEN", "VAD_ALLOWED_SOURCE_NETWORKS",
            "VAD_SOURCE_STALL_TIMEOUT_S", "VAD_CACHE_DIR", "VAD_BACKEND_RECORD", "VAD_CALIBRATION_DATA"} <= names


def test_environment_and_flags_build_the_tree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VAD_PORT", "9100")
    monkeypatch.setenv("VAD_MAX_BATCH", "4")
    monkeypatch.setenv("VAD_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("VAD_ALLOWED_SOURCE_NETWORKS", "127.0.0.0/8, 10.20.0.0/16")
    monkeypatch.setenv("VAD_SOURCE_EXTRA_OPTIONS", '{"rw_timeout": 5}')
    settings = Settings.load({"max_batch": 2, "source_stall_timeout_s": 1.5})
    assert settings.server.port == 9100  # environment
    assert settings.inference.max_batch == 2  # a flag wins over the environment
    assert settings.sources.stall_timeout_s == 1.5 and settings.model.cache_dir == tmp_path
    assert [str(n) for n in settings.sources.allowed_networks] == ["127.0.0.0/8", "10.20.0.0/16"]
    assert settings.sources.extra_options == {"rw_timeout": "5"}
    assert Settings.from_flat(port=1).flat()["port"] == 1


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("VAD_PORT", "abc", "VAD_PORT='abc': Input should be a valid integer"),
    ("VAD_MAX_BATCH", "0", "VAD_MAX_BATCH='0': Input should be greater than or equal to 1"),
    ("VAD_BACKEND", "tensorrt", "VAD_BACKEND='tensorrt': Input should be 'auto', 'torch', 'onnxruntime' or 'openvino'"),
    ("VAD_ALLOWED_SOURCE_NETWORKS", "10.0.0.0/8,banana", "VAD_ALLOWED_SOURCE_NETWORKS='10.0.0.0/8,banana': "
                                                         "allowed source networks: 'banana' is not a CIDR network"),
    ("VAD_SOURCE_EXTRA_OPTIONS", "[1", "VAD_SOURCE_EXTRA_OPTIONS='[1': expected a JSON object of FFmpeg options"),
    ("VAD_SOURCE_BACKOFF_MAX_S", "0.1", "VAD_SOURCE_BACKOFF_MAX_S='0.1': must be at least backoff_initial_s (0.5)"),
    ("VAD_METRICS_REQUIRE_TOKEN", "maybe", "VAD_METRICS_REQUIRE_TOKEN='maybe': Input should be a valid boolean"),
])
def test_a_bad_variable_is_named_with_its_value_and_why(monkeypatch: pytest.MonkeyPatch, variable: str, value: str,
                                                         expected: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        Settings.load()
    assert expected in str(raised.value) and "\n" not in str(raised.value)


def test_vad_serve_refuses_a_bad_variable_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VAD_WEBSOCKET_QUEUE_SIZE", "-3")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("vad serve: error: VAD_WEBSOCKET_QUEUE_SIZE='-3': Input should be greater than or equal to 1")


def test_every_problem_is_reported_at_once_and_a_secret_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAD_PORT", "-1")
    monkeypatch.setenv("VAD_SOURCE_STALL_TIMEOUT_S", "0")
    with pytest.raises(SettingsError) as raised:
        Settings.load({"api_token": 12345})
    message = str(raised.value)
    assert "VAD_PORT='-1'" in message and "VAD_SOURCE_STALL_TIMEOUT_S='0'" in message
    assert "--api-token:" in message and "12345" not in message


def test_unknown_keys_and_variables(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SettingsError, match=r"unknown setting\(s\): 'max_bach' \(did you mean 'max_batch'\?\)"):
        Settings.from_flat(max_bach=3)
    monkeypatch.setenv("VAD_PROT", "9000")
    caplog.set_level(logging.WARNING, logger="vad.settings")
    assert Settings.load().server.port == 8000
    assert "VAD_PROT is not a setting (did you mean VAD_PORT?)" in caplog.text


def test_an_empty_token_means_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAD_API_TOKEN", "")
    assert Settings.load().server.api_token is None
    monkeypatch.setenv("VAD_API_TOKEN", "s3cret")
    assert Settings.load().server.api_token.get_secret_value() == "s3cret"  # type: ignore[union-attr]
    assert "s3cret" not in repr(Settings.load())


def test_serve_help_shows_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for info in all_settings():
        assert info.flag in text and info.env in text, info.env
    for section in SECTIONS:
        assert f"{section} settings" in text


def test_the_docs_table_lists_every_setting_and_is_up_to_date() -> None:
    text = DOCS.read_text()
    assert text == render_docs(text), "docs/configuration.md is stale: run `make docs`"
    table = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    for info in all_settings():
        assert f"| `{info.env}` | `{info.flag}` |" in table, f"{info.env} is not documented"


def test_render_docs_replaces_only_the_table() -> None:
    page = f"# Configuration\n\nintro\n\n{TABLE_START}\nold table\n{TABLE_END}\n\nafter\n"
    rendered = render_docs(page)
    assert rendered.startswith("# Configuration\n\nintro\n\n") and rendered.endswith(f"{TABLE_END}\n\nafter\n")
    assert "old table" not in rendered and markdown_table() in rendered
    with pytest.raises(ValueError, match="marker lines"):
        render_docs("# no markers")


def test_only_the_prefixed_variable_sets_allowed_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_NETWORKS", "10.0.0.0/8")
    monkeypatch.setenv("allowed_networks", "10.0.0.0/8")
    assert Settings.load().sources.allowed_networks == ()
    monkeypatch.setenv("VAD_ALLOWED_SOURCE_NETWORKS", "192.168.0.0/16")
    assert [str(n) for n in Settings.load().sources.allowed_networks] == ["192.168.0.0/16"]


def test_an_empty_variable_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAD_SOURCE_STALL_TIMEOUT_S", "")
    monkeypatch.setenv("VAD_PORT", "")
    settings = Settings.load()
    assert settings.sources.stall_timeout_s == 5.0 and settings.server.port == 8000


def test_a_backend_and_precision_that_do_not_go_together_stop_start_up() -> None:
    with pytest.raises(SettingsError, match=r"--precision='int8': backend 'torch' supports fp32, bf16, fp16, not 'int8'"):
        Settings.from_flat(backend="torch", precision="int8")
    assert Settings.from_flat(backend="openvino", precision="int8").model.precision == "int8"
    assert Settings.from_flat(backend="auto", precision="int8").model.backend == "auto"  # auto ignores it


def test_offline_commands_share_the_cache_and_record_variables(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    from service.cli import apply_shared_settings

    monkeypatch.setenv("VAD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VAD_BACKEND_RECORD", str(tmp_path / "record.json"))
    parser = build_parser()
    calibrate = parser.parse_args(["calibrate-backends", "--weights", "w", "--data", "d"])
    apply_shared_settings(calibrate)
    assert (calibrate.cache_dir, calibrate.output) == (str(tmp_path / "cache"), str(tmp_path / "record.json"))
    evaluate = parser.parse_args(["evaluate", "--data", "d", "--cache-dir", "mine"])
    apply_shared_settings(evaluate)
    assert evaluate.cache_dir == "mine"  # a flag wins


def test_a_precision_without_a_backend_asks_for_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.load().model.backend == "auto"  # the default: measured and chosen per machine
    monkeypatch.setenv("VAD_PRECISION", "fp16")  # e.g. a GPU deployment from before auto was the default
    assert (Settings.load().model.backend, Settings.load().model.precision) == ("torch", "fp16")
    monkeypatch.setenv("VAD_BACKEND", "auto")  # both given: auto, as asked
    assert Settings.load().model.backend == "auto"
    monkeypatch.delenv("VAD_BACKEND")
    monkeypatch.setenv("VAD_PRECISION", "int8")
    with pytest.raises(SettingsError, match="^precision 'int8' needs a backend that supports it"):
        Settings.load()
