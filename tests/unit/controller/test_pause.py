"""The pause annotation, KEDA-style: ``scalable.dev/paused: "true"`` on a ScalableWorkflow."""

import pytest

from scalable.controller.dask_objects import ANNOTATION_PAUSED, paused, paused_message


def _workflow(annotations=None):
    meta = {"name": "wf", "namespace": "ns"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": {}}


@pytest.mark.parametrize("value", ["true", "True", " TRUE "])
def test_true_pauses(value):
    assert paused(_workflow({ANNOTATION_PAUSED: value}))


@pytest.mark.parametrize("annotations", [None, {}, {ANNOTATION_PAUSED: "false"}, {ANNOTATION_PAUSED: ""},
                                         {ANNOTATION_PAUSED: "yes"}, {"autoscaling.keda.sh/paused": "true"}])
def test_anything_else_does_not(annotations):
    assert not paused(_workflow(annotations))


def test_no_metadata_is_not_paused():
    assert not paused(None) and not paused({})


def test_the_message_says_what_is_held_and_how_to_resume():
    message = paused_message(_workflow({ANNOTATION_PAUSED: "true"}), "replicas are left alone")
    assert ANNOTATION_PAUSED in message and "replicas are left alone" in message
    assert message.endswith("kubectl annotate scalableworkflow wf scalable.dev/paused-")
