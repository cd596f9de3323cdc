"""The private Dagster APIs the instance plug-ins and the zygote rely on are still there, as we use
them. A Dagster upgrade that moves or changes one fails here, by name, before a run fails in the stack.
(Pools counted per run made the event-log plug-in and its private APIs unnecessary; issue 11.)"""

from __future__ import annotations

import ast
import importlib
import inspect

from constellation_core.settings import REPO_ROOT

USERS = ("constellation_dagster/instance.py", "constellation_dagster/zygote.py", "constellation_dagster/storage.py")


def _private_imports() -> list[tuple[str, str]]:
    found = []
    for path in USERS:
        for node in ast.walk(ast.parse((REPO_ROOT / path).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dagster._"):
                found += [(node.module, alias.name) for alias in node.names]
    return found


def test_every_private_name_we_import_still_exists():
    imports = _private_imports()
    assert len(imports) >= 6, imports  # the scan found them
    missing = [f"{module}.{name}" for module, name in imports
               if not hasattr(importlib.import_module(module), name)]
    assert missing == []


def test_the_private_signatures_we_call_or_override_are_unchanged():
    from dagster._cli.api import _execute_run_command_body
    from dagster._core.run_coordinator import QueuedRunCoordinator

    # The zygote's run workers run this, as `dagster api execute_run` does.
    assert list(inspect.signature(_execute_run_command_body).parameters) == [
        "run_id", "instance", "write_stream_fn", "set_exit_code_on_failure"]
    # PromptQueuedRunCoordinator sets the dequeue interval Dagster reads from this attribute.
    coordinator = QueuedRunCoordinator(dequeue_interval_seconds=1)
    assert coordinator.dequeue_interval_seconds == 1
    coordinator._dequeue_interval_seconds = 0.2  # noqa: SLF001 - what PromptQueuedRunCoordinator does
    assert coordinator.dequeue_interval_seconds == 0.2


def test_the_prompt_coordinator_dequeues_at_a_fraction_of_a_second():
    from dagster._serdes import ConfigurableClassData

    from constellation_dagster.instance import PromptQueuedRunCoordinator

    data = ConfigurableClassData("constellation_dagster.instance", "PromptQueuedRunCoordinator", "{}")
    coordinator = PromptQueuedRunCoordinator.from_config_value(data, {"dequeue_interval_seconds": 0.2})
    assert coordinator.dequeue_interval_seconds == 0.2


def test_dagsters_retry_daemon_honours_will_retry_when_it_comes_to_a_failure():
    """The reconciling sensor runs a job again itself after setting `dagster/will_retry` to false on
    the failed run (constellation_dagster.inference.sensors.RELAUNCHED_TAG): Dagster's retry daemon
    must read that tag when it comes to the failure, or a late retry would run the job twice at once."""
    import dagster as dg
    from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry

    @dg.op
    def fails() -> None:
        raise RuntimeError("boom")

    @dg.job
    def failing() -> None:
        fails()

    with dg.instance_for_test(overrides={"run_retries": {"enabled": True, "max_retries": 2}}) as instance:
        run_id = failing.execute_in_process(instance=instance, raise_on_error=False).dagster_run.run_id
        assert should_retry(instance.get_run_by_id(run_id), instance) is True
        instance.add_run_tags(run_id, {"dagster/will_retry": "false"})  # as the reconciler does
        assert should_retry(instance.get_run_by_id(run_id), instance) is False


def test_the_run_tags_constellation_reads_are_dagsters():
    """The sensors read Dagster's own run tags by name: whether its retry daemon will retry a failed run,
    and a retry's number (the job's trace names each attempt)."""
    from dagster._core.storage.tags import RETRY_NUMBER_TAG, WILL_RETRY_TAG

    from constellation_dagster.inference import dispatch

    assert (dispatch.WILL_RETRY_TAG, dispatch.RETRY_NUMBER_TAG) == (WILL_RETRY_TAG, RETRY_NUMBER_TAG)
