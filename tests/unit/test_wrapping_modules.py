"""wrapping.py's split: public names stay importable from ``otel_vllm_ascend.wrapping``, and
``caller_filter`` looks past every module that holds wrapper frames."""

import inspect

from otel_vllm_ascend import call_binding, handler_calls, hook, timers, wrapping


def test_public_names_are_the_objects_of_their_home_modules():
    homes = (hook, timers, handler_calls, call_binding)
    for name in wrapping.__all__:
        value = getattr(wrapping, name)
        if name == "build_wrapper":
            continue
        owners = [m for m in homes if getattr(m, name, None) is value]
        assert owners, f"wrapping.{name} is not re-exported from its module"


def test_every_module_with_wrapper_frames_is_skipped_by_caller_filter():
    wrapper_modules = {getattr(value, "__module__", None) for value in
                       (getattr(wrapping, n) for n in wrapping.__all__)
                       if inspect.isfunction(value) or inspect.isclass(value)}
    wrapper_modules.discard(call_binding.__name__)  # binds names, calls nothing
    assert wrapper_modules <= hook.WRAPPER_MODULES, wrapper_modules - hook.WRAPPER_MODULES
