"""One span -> message mapping for both sides of the contract.

The analyzer's OTLP reader builds messages with ``otel_vllm_ascend.contract_message``; the
exporter writes the same mapping as JSON, splicing ``ms.rid_detail``'s text in and caching
message keys. These tests hold what it writes to the mapping, key order included, for generated
attributes and for every record kind.
"""

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan

from otel_vllm_ascend import contract, contract_message
from otel_vllm_ascend.analysis.read_otlp import span_message
from otel_vllm_ascend.exporters import message as exporter_message

_names = st.sampled_from([
    "batch_size", "iter", "name", "domain", "type", "rid", "pid", "tid", "markId", "x",
    "ms.metric.usage", "ms.metric_inc.tokens", "ms.scope.step", "ms.link.from", "ms.link.to",
    "ms.meta.version", "ms.unknown", "gen_ai.request.id", "thread.id", "code.function",
    contract.DOMAIN, contract.RID, contract.TYPE,
])
_values = st.one_of(st.integers(-5, 10**6), st.text(max_size=6), st.booleans(),
                    st.lists(st.integers(0, 9), max_size=3).map(tuple))
_details = st.one_of(st.none(), st.just("not json"), st.just("5"),
                     st.lists(st.fixed_dictionaries({"rid": st.text(max_size=3),
                                                     "iter": st.integers(0, 9)}),
                              max_size=3).map(json.dumps))


@settings(max_examples=300, deadline=None)
@given(attrs=st.dictionaries(_names, _values, max_size=8), detail=_details,
       name=st.one_of(st.none(), st.sampled_from(["modelExec", "Enqueue"])),
       default_type=st.sampled_from([None, 0, 2, 3]),
       inherited=st.one_of(st.none(), st.just("Schedule")))
def test_shared_mapping_equals_what_the_exporter_writes(attrs, detail, name, default_type,
                                                        inherited):
    if detail is not None:
        attrs = {**attrs, contract.RID_DETAIL: detail}
    # The exporter's dict comes back from its JSON text: compare as JSON values.
    ours = json.loads(json.dumps(contract_message.message_dict(name, default_type, attrs,
                                                               inherited)))
    written = exporter_message.message_dict(name, default_type, attrs, inherited)
    assert list(ours.items()) == list(written.items())


def _span(name, attrs, events=()):
    return ReadableSpan(name=name, attributes=attrs, events=events, start_time=1_000,
                        end_time=5_000)


def test_every_record_kind_reads_back_as_written():
    base = {contract.DOMAIN: "Request", contract.RID: "r1", "batch_size": 3,
            "ms.metric.usage": 0.5, "pid": 7, "name": "shadowed"}
    for record in (None, contract.RECORD_EVENT, contract.RECORD_LINK, contract.RECORD_METRIC,
                   "kind-from-the-future"):
        attrs = dict(base)
        if record is not None:
            attrs[contract.RECORD] = record
        if record == contract.RECORD_LINK:
            attrs.update({contract.LINK_FROM: "a", contract.LINK_TO: "b"})
        rows = exporter_message.span_to_records(_span("httpReq", attrs), fallback_tid=1).mstx
        written = json.loads(rows[-1].message)
        read, _ = span_message("httpReq", attrs, 2)
        assert list(read.items()) == list(written.items()), record
    # The header keys come first in the contract's order, then the others.
    read, _ = span_message("httpReq", base, 2)
    assert list(read)[:4] == ["domain", "name", "type", "rid"]
    assert "pid" not in read and read["name"] == "httpReq"


def test_reserved_and_viewer_only_attributes_are_not_message_keys():
    assert contract_message.message_key("markId") is contract_message.REJECTED
    assert contract_message.message_key("gen_ai.request.id") is None
    assert contract_message.message_key("ms.metric_inc.n") == "n+"
    assert contract_message.message_key("ms.scope.step") == "scope#step"
