"""`infer run` end to end: the installed command, the real llama-cpp-python, the real SmolLM2 model."""

from __future__ import annotations

import json
import re
import signal
import subprocess

import jsonschema
import pytest

pytestmark = pytest.mark.model

STATS = re.compile(r"^load [\d.]+ s · ttft [\d.]+ s · prompt [\d.]+ tok/s \(\d+ tok.*\) · gen [\d.]+ tok/s \(\d+ tok\)$")


def test_answer_streams_to_stdout_and_nothing_else(infer, smollm2):
    proc = infer("run", "-m", smollm2.path, "--seed", "1", "-n", "24", "Say hello to the world.")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert proc.stdout.endswith("\n")
    assert proc.stderr == ""


def test_same_seed_same_bytes(infer, smollm2):
    args = ("run", "-m", smollm2.path, "--seed", "1234", "--temperature", "0.9", "-n", "40", "Write a short poem.")
    first, second = infer(*args), infer(*args)
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout
    other = infer("run", "-m", smollm2.path, "--seed", "99", "--temperature", "0.9", "-n", "40", "Write a short poem.")
    assert other.stdout != first.stdout  # the seed is really used


def test_json_result_fields_and_types(infer, smollm2):
    proc = infer("run", "-m", smollm2.path, "--json", "-n", "8", "--seed", "3", "hi")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {"model", "text", "finish_reason", "usage", "timings"}
    assert isinstance(data["text"], str) and data["text"]
    assert data["finish_reason"] in ("stop", "length")
    assert isinstance(data["usage"]["prompt_tokens"], int) and data["usage"]["prompt_tokens"] > 0
    assert 0 < data["usage"]["completion_tokens"] <= 8
    for key in ("load_s", "ttft_s", "prompt_tps", "gen_tps"):
        assert isinstance(data["timings"][key], (int, float)) and data["timings"][key] >= 0


def test_max_tokens_gives_length_finish(infer, smollm2):
    data = json.loads(infer("run", "-m", smollm2.path, "--json", "-n", "5", "--temperature", "0",
                            "Tell me a long story about dragons.").stdout)
    assert data["usage"]["completion_tokens"] == 5
    assert data["finish_reason"] == "length"


def test_schema_constrains_output(infer, smollm2, tmp_path):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"]}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    for value in (str(path), json.dumps(schema)):
        proc = infer("run", "-m", smollm2.path, "--schema", value, "--temperature", "0", "-n", "60",
                     "What is the capital of France and its population?")
        assert proc.returncode == 0, proc.stderr
        jsonschema.validate(json.loads(proc.stdout), schema)


def test_format_json_is_valid_json(infer, smollm2):
    proc = infer("run", "-m", smollm2.path, "--format", "json", "--temperature", "0", "-n", "300",
                 "Give a JSON object with keys name and age for a person.")
    assert proc.returncode == 0, proc.stderr
    assert isinstance(json.loads(proc.stdout), dict)


def test_constrained_output_cut_by_the_limit_is_flagged(infer, smollm2):
    proc = infer("run", "-m", smollm2.path, "--format", "json", "--temperature", "0", "-n", "6",
                 "Give a JSON object with keys name and age for a person.")
    assert proc.returncode == 0
    assert "incomplete" in proc.stderr


def test_stats_go_to_stderr_only(infer, smollm2):
    args = ("run", "-m", smollm2.path, "--seed", "5", "-n", "12", "hi")
    plain, with_stats = infer(*args), infer(*args, "--stats")
    assert with_stats.stdout == plain.stdout
    where, stats = with_stats.stderr.strip().splitlines()
    assert where.startswith("running on: CPU")
    assert STATS.match(stats), with_stats.stderr


def test_stdin_is_material_and_arguments_the_instruction(infer, smollm2):
    story = "Alice has a red bicycle. She rides it to school every morning."
    only_args = json.loads(infer("run", "-m", smollm2.path, "--json", "-n", "4", "Who rides?").stdout)
    both = json.loads(infer("run", "-m", smollm2.path, "--json", "-n", "4", "Who rides?", input=story).stdout)
    only_stdin = infer("run", "-m", smollm2.path, "-n", "4", input=story)
    assert only_stdin.returncode == 0 and only_stdin.stdout.strip()
    assert both["usage"]["prompt_tokens"] > only_args["usage"]["prompt_tokens"] + 10


def test_raw_completion_and_stop(infer, smollm2):
    proc = infer("run", "-m", smollm2.path, "--raw", "--temperature", "0", "-n", "40", "--stop", "7", "--json",
                 "1, 2, 3, 4, 5,")
    data = json.loads(proc.stdout)
    assert "7" not in data["text"]
    assert data["finish_reason"] == "stop"
    assert "6" in data["text"]


def test_verbose_names_the_model_on_stderr(pulled):
    proc = pulled("run", "--verbose", "-n", "4", "hi", env={"INFER_MODEL": "smollm2"})
    assert proc.returncode == 0, proc.stderr
    assert "model: smollm2" in proc.stderr and "INFER_MODEL" in proc.stderr
    quiet = pulled("run", "-n", "4", "hi", env={"INFER_MODEL": "smollm2"})
    assert quiet.stderr == ""


def test_pulled_model_runs_with_the_network_gone(pulled):
    # HF_ENDPOINT and the proxies point at a closed port (see conftest): any network use would fail.
    proc = pulled("run", "-m", "smollm2", "-n", "8", "hi")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_config_file_sets_the_default_model(pulled):
    home = pulled.env["INFER_HOME"]
    import pathlib

    cfg = pathlib.Path(home) / "config" / "config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text('model = "smollm2"\n')
    proc = pulled("run", "-v", "-n", "4", "hi")
    assert proc.returncode == 0, proc.stderr
    assert "config.toml" in proc.stderr


@pytest.mark.parametrize("args, code, words", [
    (["-m", "/nonexistent/model.gguf", "hi"], 3, "not found"),
    (["-m", "{model}", "--temperature", "-1", "hi"], 2, "--temperature"),
    (["-m", "{model}", "--top-p", "1.5", "hi"], 2, "--top-p"),
    (["-m", "{model}", "-n", "0", "hi"], 2, "--max-tokens"),
    (["-m", "{model}", "--repeat-penalty", "0", "hi"], 2, "--repeat-penalty"),
    (["-m", "{model}", "--schema", "{not json", "hi"], 2, "invalid JSON"),
    (["-m", "{model}", "--schema", '{"type": "banana"}', "hi"], 2, "banana"),
    (["-m", "{model}", "--format", "yaml", "hi"], 2, "--format"),
    (["-m", "{model}"], 2, "no prompt"),
    (["-m", "{model}", "   "], 2, "no prompt"),
    (["-m", "no-such-alias", "hi"], 3, "unknown model"),
    (["-m", "smollm", "hi"], 3, "did you mean smollm2"),
    (["-m", "{model}", "-c", "32", "-n", "20", "Tell me everything you know about the history of the world."], 5,
     "context holds 32"),
])
def test_bad_input_one_line_and_exit_code(infer, smollm2, args, code, words):
    args = [a.replace("{model}", str(smollm2.path)) for a in args]
    proc = infer("run", *args)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("infer: "), proc.stderr
    assert words in lines[0]


def test_not_gguf_and_truncated_files_are_refused(infer, smollm2, tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("this is not a model\n")
    truncated = tmp_path / "cut.gguf"
    with smollm2.path.open("rb") as f:
        truncated.write_bytes(f.read(3_000_000))
    header_only = tmp_path / "head.gguf"
    header_only.write_bytes(smollm2.path.read_bytes()[:12])
    for path, words in ((text, "not a GGUF file"), (truncated, "could not load"), (header_only, "truncated")):
        proc = infer("run", "-m", path, "hi")
        assert proc.returncode == 4, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr


def test_undecodable_stdin_is_replaced_with_a_warning(infer, smollm2):
    proc = infer("run", "-m", smollm2.path, "-n", "4", "What is this?", input=b"\xff\xfe\x00binary\xc3(")
    assert proc.returncode == 0, proc.stderr
    assert "not valid UTF-8" in proc.stderr.decode()
    assert proc.stdout.strip()


def test_closed_pipe_ends_quietly(infer, smollm2):
    cmd = f"'{smollm2_bin()}' run -m '{smollm2.path}' -n 300 --seed 1 'Write a long story.' | head -c 5"
    proc = subprocess.run(["bash", "-c", cmd + "; echo \"rc=${PIPESTATUS[0]}\" >&2"], capture_output=True, text=True,
                          env=infer.env, timeout=120)
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr
    assert "rc=0" in proc.stderr
    assert len(proc.stdout) == 5


def test_ctrl_c_keeps_partial_text_and_exits_130(infer, smollm2):
    p = infer.popen("run", "-m", smollm2.path, "--raw", "-n", "4000", "--temperature", "0", "1, 2, 3, 4, 5,",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.read(20)  # generation is under way (counting goes on for thousands of tokens)
    p.send_signal(signal.SIGINT)
    rest, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert len(first + rest) >= 20
    assert b"interrupted" in err and b"Traceback" not in err


def smollm2_bin() -> str:
    from conftest import infer_bin

    return infer_bin()
