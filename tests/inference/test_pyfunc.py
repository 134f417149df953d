"""The served model's class as MLflow 3 sees it: no library warning on a newcomer's first screen."""

from __future__ import annotations

import importlib
import warnings


def test_defining_the_served_model_warns_nothing_about_type_hints() -> None:
    """MLflow 3 warns "Add type hints to the `predict` method" when a PythonModel subclass is
    defined with an untyped predict (the first screen of `make demo` showed it). The class is
    defined again here, by reloading its module, with every warning recorded."""
    from pneumonia.inference import pyfunc

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importlib.reload(pyfunc)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "type hint" in m.lower()], messages
    # the hint is one MLflow infers no schema from: the explicit signature stays the model's
    from mlflow.types.type_hints import _signature_cannot_be_inferred_from_type_hint

    hint = pyfunc.PneumoniaModel().predict_type_hints.input
    assert _signature_cannot_be_inferred_from_type_hint(hint)
