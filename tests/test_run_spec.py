"""What `amlfs run` is asked for, as pure logic: input and output specs, placeholders,
which signals are passed on to the command, and how its exit status is reported."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest

from amlfs.errors import UserError
from amlfs.jobs.command import SI_KERNEL, exit_status, should_forward
from amlfs.jobs.spec import InputSpec, OutputSpec, parse_input, parse_output, substitute


def test_inputs_default_to_a_mount_and_keep_their_reference() -> None:
    assert parse_input("train=weather") == InputSpec("train", "weather", "mount")
    assert parse_input("val=weather:3,mode=download") == InputSpec("val", "weather:3", "download")
    assert parse_input("Train_2=weather:latest").env_var == "AMLFS_INPUT_Train_2"


def test_outputs_default_to_an_upload_and_substitute_their_path() -> None:
    spec = parse_output("model=results:/models/{run-id}/{output-name}/,mode=mount,register=m")
    assert spec == OutputSpec("model", "results", "models/{run-id}/{output-name}", "mount", "m")
    assert spec.target("20261121-101500-abcdef") == "models/20261121-101500-abcdef/model"
    assert parse_output("o=ds:").target("r") == ""  # the datastore's root
    assert parse_output("o=ds:x").mode == "upload"


@pytest.mark.parametrize(
    ("parse", "text", "says"),
    [
        (parse_input, "train", "expected NAME=DATASET"),
        (parse_input, "train=", "expected NAME=DATASET"),
        (parse_input, "2train=w", "the name '2train'"),
        (parse_input, "my-input=w", "the name 'my-input'"),
        (parse_input, "t=w,mode=copy", "mode must be mount or download"),
        (parse_input, "t=w,mode=mount,mode=download", "mode given twice"),
        (parse_input, "t=w,cache=1", "'cache=1' is not one of mode=…"),
        (parse_input, "t=w:0", "invalid version"),
        (parse_output, "o=results", "expected NAME=DATASTORE:PATH"),
        (parse_output, "o=results:x,mode=download", "mode must be upload or mount"),
        (parse_output, "o=results:{date}/x", "unknown placeholder {date}"),
        (parse_output, "o=results:x,register=bad name", "invalid dataset name"),
    ],
)
def test_a_malformed_spec_is_a_usage_error_that_says_why(parse, text: str, says: str) -> None:
    with pytest.raises(UserError) as caught:
        parse(text)
    assert says in str(caught.value)


def test_placeholders_become_local_paths_and_other_braces_are_left_alone() -> None:
    inputs, outputs = {"train": "/w/in/train"}, {"model": "/w/out/model"}
    assert substitute("--data={inputs.train}", inputs, outputs, "r1") == "--data=/w/in/train"
    assert substitute("{outputs.model}/{run-id}.pt", inputs, outputs, "r1") == "/w/out/model/r1.pt"
    for untouched in ("{}", "${HOME}", "{'a': 1}", "{inputs}", "{inputs.}", "{output-name}"):
        assert substitute(untouched, inputs, outputs, "r1") == untouched
    with pytest.raises(UserError, match=r"no input named 'val' \(the run's inputs: train\)"):
        substitute("{inputs.val}", inputs, outputs, "r1")
    with pytest.raises(UserError, match=r"no output named 'x' \(the run's outputs: model\)"):
        substitute("{outputs.x}", inputs, outputs, "r1")


def test_signals_from_a_process_are_passed_on_and_the_terminals_are_not() -> None:
    # kill(2) and sigqueue(3) give si_code 0 and -1; the terminal's Ctrl-C reached the
    # command already (same foreground process group), so it must not arrive twice.
    assert should_forward(SimpleNamespace(si_signo=signal.SIGTERM, si_code=0))
    assert should_forward(SimpleNamespace(si_signo=signal.SIGUSR1, si_code=-1))
    assert not should_forward(SimpleNamespace(si_signo=signal.SIGINT, si_code=SI_KERNEL))


def test_exit_status_is_reported_as_a_shell_does() -> None:
    assert exit_status(0) == 0
    assert exit_status(3) == 3
    assert exit_status(-signal.SIGINT) == 130
    assert exit_status(-signal.SIGKILL) == 137
