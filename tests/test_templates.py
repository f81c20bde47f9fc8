"""Templates: sandboxed Jinja2, strict undefined, compiled once; property tests."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignkit import Template, TemplateError
from campaignkit._templates import compile_template

names = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8).filter(
    lambda s: (
        s
        not in {
            "if",
            "in",
            "or",
            "and",
            "not",
            "is",
            "for",
            "true",
            "false",
            "none",
            "range",
            "dict",
            "lipsum",
            "cycler",
            "joiner",
            "namespace",
        }
    )
)
values = st.text(max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(names, values, min_size=1, max_size=5),
    st.text(alphabet=st.characters(blacklist_characters="{}%#\r\n"), max_size=30),
)
def test_render_substitutes_every_field(fields: dict[str, str], literal: str) -> None:
    body = literal + "".join(f"[{{{{ {k} }}}}]" for k in fields)
    compiled = compile_template(Template(body=body), channel="sms", fields=set(fields))
    rendered = compiled.render(fields)["body"]
    assert rendered == literal + "".join(f"[{v}]" for v in fields.values())


@settings(max_examples=150, deadline=None)
@given(values)
def test_html_part_escapes_every_value(value: str) -> None:
    compiled = compile_template(
        Template(body="{{ v }}", html="<p>{{ v }}</p>"), channel="email", fields={"v"}
    )
    out = compiled.render({"v": value})
    assert out["body"] == value
    inner = out["html"][3:-4]
    assert "<" not in inner and ">" not in inner and '"' not in inner
    import html

    assert html.unescape(inner) == value


@settings(max_examples=100, deadline=None)
@given(st.sets(names, min_size=1, max_size=4), names)
def test_unknown_field_is_rejected_at_compile_time(known: set[str], extra: str) -> None:
    body = "{{ " + extra + " }}"
    if extra in known:
        compile_template(Template(body=body), channel="sms", fields=known)
    else:
        with pytest.raises(TemplateError, match=extra):
            compile_template(Template(body=body), channel="sms", fields=known)


def test_syntax_error_names_channel_part_and_line() -> None:
    with pytest.raises(
        TemplateError, match=r"channels\.email\.template\.subject: syntax error at line 2"
    ):
        compile_template(Template(body="x", subject="ok\n{{ oops }"), channel="email", fields=set())


def test_loop_variables_and_filters_are_not_fields() -> None:
    t = Template(
        body="{% for x in items.split(',') %}{{ x|upper }}{% endfor %} {{ name|default('you') }}"
    )
    compiled = compile_template(t, channel="push", fields={"items", "name"})
    assert compiled.render({"items": "a,b", "name": ""})["body"] == "AB "


def test_body_is_required() -> None:
    with pytest.raises(TemplateError, match="needs a body"):
        compile_template(Template(subject="s"), channel="email", fields=set())


def test_push_data_values_are_templates() -> None:
    compiled = compile_template(
        Template(body="b", title="t", data={"deep_link": "app://u/{{ id }}"}),
        channel="push",
        fields={"id"},
    )
    assert compiled.render({"id": "42"})["data"] == {"deep_link": "app://u/42"}


# Text that parses as template data: no Jinja delimiters, but markup, quotes, newlines
# (a trailing one too, which Jinja drops) and non-ASCII.
template_text = st.text(
    alphabet=st.characters(blacklist_characters="{}%#", blacklist_categories=("Cs",)),
    max_size=12,
)
context_values = st.one_of(values, st.none(), st.integers(), st.just("<b>&\"'</b>"))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(template_text, names.map(lambda n: "{{ " + n + " }}")), max_size=6),
    st.dictionaries(names, context_values, max_size=6),
    st.booleans(),
)
def test_plain_templates_render_exactly_as_jinja(
    pieces: list[str], context: dict[str, object], html: bool
) -> None:
    """Text and ``{{ field }}`` only: the fast path gives Jinja's output, or its error."""
    from jinja2 import StrictUndefined, UndefinedError
    from jinja2.sandbox import SandboxedEnvironment

    source = "".join(pieces)
    part = "html" if html else "body"
    compiled = compile_template(Template(**{part: source}), channel="email")
    assert compiled.parts[part].pieces is not None  # the fast path is taken
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=html)
    try:
        expected: str | None = env.from_string(source).render(context)
    except UndefinedError as exc:  # the same error, as a TemplateError
        expected, message = None, exc.message
    if expected is None:
        with pytest.raises(TemplateError) as caught:
            compiled.render(context)
        assert message and message in str(caught.value)
    else:
        assert compiled.render(context)[part] == expected


@pytest.mark.parametrize(
    "source",
    [
        "{{ name | upper }}",
        "{% if name %}x{% endif %}",
        "{{ name ~ 'x' }}",
        "{{ user.name }}",
        "{{ range }}",
        "{# comment #}{{ name }}{{ 1 + 1 }}",
    ],
)
def test_other_templates_render_through_jinja(source: str) -> None:
    compiled = compile_template(Template(body=source), channel="sms")
    assert compiled.parts["body"].pieces is None
    out = compiled.render({"name": "Ana", "user": {"name": "Bo"}})["body"]
    from jinja2.sandbox import SandboxedEnvironment

    assert out == SandboxedEnvironment().from_string(source).render(name="Ana", user={"name": "Bo"})


@pytest.mark.parametrize(
    ("source", "tag"),
    [
        ('{% include "footer.txt" %}', "include"),
        ('{% import "macros.txt" as m %}{{ m.x() }}', "import"),
        ('{% from "macros.txt" import x %}{{ x() }}', "from ... import"),
        ('{% extends "base.txt" %}', "extends"),
        ('Hi\n{% if name %}{% include "x" %}{% endif %}', "include"),
    ],
)
def test_tags_that_load_templates_are_refused_when_compiled(source: str, tag: str) -> None:
    with pytest.raises(TemplateError, match=r"^channels\.sms\.template\.body: line \d") as info:
        compile_template(Template(body=source), channel="sms", fields={"name"})
    assert f"{{% {tag} %}} is not supported" in str(info.value)


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ name + 1 }}", "TypeError"),
        ("{{ name | round }}", "TypeError"),
    ],
)
def test_an_expression_that_fails_is_this_recipients_template_error(
    source: str, error: str
) -> None:
    compiled = compile_template(Template(body=source), channel="sms", fields={"name"})
    with pytest.raises(TemplateError, match=error):
        compiled.render({"name": "Ann"})


def test_a_failing_expression_fails_the_message_not_the_run(tmp_path: object) -> None:
    from pathlib import Path

    from campaignkit import Channel, Pipeline, get_plugin_manager
    from campaignkit.testing import StaticSource, recording_plugin

    recorder = recording_plugin()
    rows = [{"id": f"c{i}", "email": f"u{i}@example.com", "n": str(i)} for i in range(4)]
    channel = Channel(
        name="email",
        provider="recording",
        template=Template(body="{{ 12 // (n | int) }}"),  # c0: division by zero
        require_consent=False,
    )
    pipeline = Pipeline(
        "tpl",
        StaticSource.from_dicts(rows),
        [channel],
        plugins=get_plugin_manager(load_entrypoints=False, plugins=[recorder]),
        env={},
        base_dir=Path(str(tmp_path)),
    )
    report = pipeline.run()
    result = report.channels["email"]
    assert (result.sent, result.failed, result.pending) == (3, 1, 0)
    assert result.reasons == {"render_error": 1}
    assert str(report.status) == "partial"
    assert recorder.outbox.count == 3


def test_preview_names_the_render_error_when_no_message_renders(tmp_path: object) -> None:
    from pathlib import Path

    from campaignkit import Channel, Pipeline, get_plugin_manager
    from campaignkit.testing import StaticSource, recording_plugin

    rows = [{"id": f"c{i}", "email": f"u{i}@example.com", "n": "0"} for i in range(5)]
    channel = Channel(
        name="email",
        provider="recording",
        template=Template(body="{{ 12 // (n | int) }}"),
        require_consent=False,
    )
    pipeline = Pipeline(
        "tpl",
        StaticSource.from_dicts(rows),
        [channel],
        plugins=get_plugin_manager(load_entrypoints=False, plugins=[recording_plugin()]),
        env={},
        base_dir=Path(str(tmp_path)),
    )
    with pytest.raises(TemplateError, match=r"c0\) with render_error: .*ZeroDivisionError"):
        pipeline.preview("email", 3)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("Hi {{ name | nosuchfilter }}", "No filter named 'nosuchfilter'"),
        ("{% if name is nosuchtest %}x{% endif %}", "No test named 'nosuchtest'"),
        ("line one\n{{ name | upper | shout }}", "No filter named 'shout'"),
        ("{% if name %}{{ name | shout }}{% endif %}", "No filter named 'shout'"),
    ],
)
@pytest.mark.parametrize("fields", [None, {"name"}])
def test_unknown_filter_or_test_is_a_template_error_not_a_crash(
    source: str, message: str, fields: set[str] | None
) -> None:
    with pytest.raises(TemplateError, match=message) as info:
        compile_template(Template(body=source), channel="sms", fields=fields)
    assert info.value.part == "body"
    assert "line " in str(info.value)
