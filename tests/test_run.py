"""`infer run` end to end: the installed command, the real llama-cpp-python, the real SmolLM2 model."""

from __future__ import annotations

import json
import re
import signal
import subprocess

import jsonschema
import pytest

from conftest import ENDLESS, infer_bin, seed

pytestmark = pytest.mark.model

# No assertion here depends on what the model says: answers are compared between two runs of the same test, or
# forced by a grammar (ENDLESS: never ends before -n; a const schema: one exact text).

STATS = re.compile(r"^load [\d.]+ s · ttft [\d.]+ s · prompt [\d.]+ tok/s \(\d+ tok.*\) · gen [\d.]+ tok/s \(\d+ tok\)$")


def test_answer_streams_to_stdout_and_nothing_else(infer, smollm2):
    args = ("run", "-m", smollm2.path, "--seed", seed(1), "-n", "24", "Say hello to the world.")
    proc = infer(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    text = json.loads(infer(*args, "--json").stdout)["text"]  # the same answer, as data
    assert proc.stdout == (text if text.endswith("\n") else text + "\n")  # the answer, a final newline, nothing else


def test_same_seed_same_bytes(infer, smollm2):
    def poem(n: int) -> subprocess.CompletedProcess:
        return infer("run", "-m", smollm2.path, "--seed", seed(n), "--temperature", "0.9", "-n", "40", "Write a short poem.")

    first, second = poem(1234), poem(1234)
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout
    others = {poem(n).stdout for n in (99, 100, 101)}
    assert others - {first.stdout}  # the seed is really used: other seeds give other answers


def test_json_result_fields_and_types(infer, smollm2):
    proc = infer("run", "-m", smollm2.path, "--json", "-n", "8", "--seed", seed(3), "hi")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {"model", "text", "finish_reason", "usage", "timings"}
    assert isinstance(data["text"], str)
    assert data["finish_reason"] in ("stop", "length")
    assert isinstance(data["usage"]["prompt_tokens"], int) and data["usage"]["prompt_tokens"] > 0
    assert isinstance(data["usage"]["completion_tokens"], int) and 0 <= data["usage"]["completion_tokens"] <= 8
    for key in ("load_s", "ttft_s", "prompt_tps", "gen_tps"):
        assert isinstance(data["timings"][key], (int, float)) and data["timings"][key] >= 0


def test_max_tokens_gives_length_finish(infer, smollm2):
    data = json.loads(infer("run", "-m", smollm2.path, "--json", "-n", "5", "--seed", seed(6), "--schema", ENDLESS,
                            "Tell me a long story about dragons.").stdout)
    assert data["usage"]["completion_tokens"] == 5
    assert data["finish_reason"] == "length"
    assert data["text"].startswith('"') and len(data["text"]) >= 5


def test_schema_constrains_output(infer, smollm2, tmp_path):
    # Bounded: a string of at most 24 characters and an integer of at most 16 digits (the grammar's own limit), so
    # whatever the model picks, the object is complete well within 400 tokens.
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    for value in (str(path), json.dumps(schema)):
        proc = infer("run", "-m", smollm2.path, "--schema", value, "--seed", seed(7), "-n", "400",
                     "What is the capital of France and its population?")
        assert proc.returncode == 0, proc.stderr
        jsonschema.validate(json.loads(proc.stdout), schema)


def test_format_json_is_valid_json(infer, smollm2):
    """Any JSON object is allowed, so its length is the model's choice: a finished answer must parse, one cut by
    the limit must say so. Either way the grammar makes it an object."""
    proc = infer("run", "-m", smollm2.path, "--format", "json", "--json", "--seed", seed(8), "-n", "300",
                 "Give a JSON object with keys name and age for a person.")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["text"].lstrip().startswith("{")
    if data["finish_reason"] == "stop":
        assert isinstance(json.loads(data["text"]), dict)
        assert "incomplete" not in proc.stderr
    else:
        assert data["usage"]["completion_tokens"] == 300 and "incomplete" in proc.stderr


def test_constrained_output_cut_by_the_limit_is_flagged(infer, smollm2):
    proc = infer("run", "-m", smollm2.path, "--schema", ENDLESS, "--seed", seed(9), "-n", "6",
                 "Give a JSON object with keys name and age for a person.")
    assert proc.returncode == 0
    assert proc.stdout.startswith('"') and proc.stdout.endswith("\n")
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "incomplete" in lines[0]


def test_stats_go_to_stderr_only(infer, smollm2):
    args = ("run", "-m", smollm2.path, "--seed", seed(5), "-n", "12", "hi")
    plain, with_stats = infer(*args), infer(*args, "--stats")
    assert with_stats.stdout == plain.stdout
    where, stats = with_stats.stderr.strip().splitlines()
    assert where.startswith("running on: ")  # CPU, or the GPU of a GPU build
    assert STATS.match(stats), with_stats.stderr


def test_stdin_is_material_and_arguments_the_instruction(infer, smollm2):
    story = "Alice has a red bicycle. She rides it to school every morning."
    only_args = json.loads(infer("run", "-m", smollm2.path, "--json", "-n", "4", "Who rides?").stdout)
    both = json.loads(infer("run", "-m", smollm2.path, "--json", "-n", "4", "Who rides?", input=story).stdout)
    only_stdin = json.loads(infer("run", "-m", smollm2.path, "--json", "-n", "4", input=story).stdout)
    story_tokens = only_stdin["usage"]["prompt_tokens"]
    assert both["usage"]["prompt_tokens"] > only_args["usage"]["prompt_tokens"] + 10
    assert both["usage"]["prompt_tokens"] > story_tokens  # the story and the instruction, both there


def test_raw_completion_and_stop(infer, smollm2):
    # The schema allows one text only, so the stop string is certainly generated (in whatever tokens).
    forced = json.dumps({"const": "1, 2, 3, 4, 5, 6, 7, 8, 9"})
    proc = infer("run", "-m", smollm2.path, "--raw", "--schema", forced, "-n", "60", "--stop", "7", "--json",
                 "1, 2, 3, 4, 5,")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["text"] == '"1, 2, 3, 4, 5, 6, '
    assert data["finish_reason"] == "stop"
    free = json.loads(infer("run", "-m", smollm2.path, "--raw", "--seed", seed(10), "-n", "40", "--stop", ",",
                            "--json", "1, 2, 3, 4, 5,").stdout)
    assert "," not in free["text"]  # whatever the model says, a stop string never reaches the output


def test_verbose_names_the_model_on_stderr(pulled):
    proc = pulled("run", "--verbose", "-n", "4", "hi", env={"INFER_MODEL": "smollm2"})
    assert proc.returncode == 0, proc.stderr
    assert "model: smollm2" in proc.stderr and "INFER_MODEL" in proc.stderr
    quiet = pulled("run", "-n", "4", "hi", env={"INFER_MODEL": "smollm2"})
    assert quiet.stderr == ""


def test_pulled_model_runs_with_the_network_gone(pulled):
    # HF_ENDPOINT and the proxies point at a closed port (see conftest): any network use would fail.
    proc = pulled("run", "-m", "smollm2", "-n", "8", "--json", "hi")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["usage"]["prompt_tokens"] > 0


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
    proc = infer("run", "-m", smollm2.path, "-n", "4", "--json", "What is this?", input=b"\xff\xfe\x00binary\xc3(")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.decode().count("not valid UTF-8") == 1
    clean = infer("run", "-m", smollm2.path, "-n", "4", "--json", "What is this?", input=b"\x00binary(")
    # the two bad sequences became replacement characters: the prompt is longer than without them
    assert json.loads(proc.stdout)["usage"]["prompt_tokens"] > json.loads(clean.stdout)["usage"]["prompt_tokens"]


def test_closed_pipe_ends_quietly(infer, smollm2):
    cmd = f"'{infer_bin()}' run -m '{smollm2.path}' -n 300 --schema '{ENDLESS}' 'Write a long story.' | head -c 5"
    proc = subprocess.run(["bash", "-c", cmd + "; echo \"rc=${PIPESTATUS[0]}\" >&2"], capture_output=True, text=True,
                          env=infer.env, timeout=120)
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr
    assert "rc=0" in proc.stderr
    assert len(proc.stdout) == 5


def test_ctrl_c_keeps_partial_text_and_exits_130(infer, smollm2):
    p = infer.popen("run", "-m", smollm2.path, "--raw", "-n", "4000", "--schema", ENDLESS, "1, 2, 3, 4, 5,",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.read(20)  # generation is under way, and cannot end by itself for 2000 characters
    p.send_signal(signal.SIGINT)
    rest, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert len(first + rest) >= 20 and (first + rest).startswith(b'"')
    assert b"interrupted" in err and b"Traceback" not in err
