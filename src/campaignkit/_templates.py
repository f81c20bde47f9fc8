"""Message templates: Jinja2 in a sandbox, strict about undefined fields, compiled once."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import attrs
import jinja2
import jinja2.meta
import markupsafe
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from ._config import Template
from .exceptions import TemplateError

__all__ = ["CompiledTemplate", "compile_template", "template_problems"]

_TEXT_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
_HTML_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=True)
# Names Jinja provides itself; never reported as missing fields.
_BUILTINS = frozenset(_TEXT_ENV.globals)


@attrs.frozen
class _Part:
    """One compiled part. ``pieces`` is set when the template is only text and
    ``{{ field }}`` outputs: it then renders by joining the text with the field values
    (escaped for HTML), as Jinja would, without Jinja's per-render context. Anything
    else (filters, tags, expressions) renders through Jinja."""

    template: jinja2.Template
    pieces: tuple[tuple[bool, str], ...] | None  # (is_field, text or field name)
    convert: Callable[[Any], str]  # a field value to output text: str, or escape for HTML

    def render(self, context: Mapping[str, Any], variables: Callable[[], dict[str, Any]]) -> str:
        if self.pieces is not None:
            convert = self.convert
            try:
                return "".join(
                    [convert(context[text]) if field else text for field, text in self.pieces]
                )
            except KeyError:
                pass  # undefined: Jinja raises the error, worded as usual
        return _render(self.template, variables())


def _pieces(env: SandboxedEnvironment, ast: nodes.Template) -> tuple[tuple[bool, str], ...] | None:
    pieces: list[tuple[bool, str]] = []
    for node in ast.body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                pieces.append((False, child.data))
            elif (
                isinstance(child, nodes.Name)
                and child.ctx == "load"
                and child.name not in env.globals
            ):
                pieces.append((True, child.name))
            else:
                return None
    return tuple(pieces)


#: Tags that load other templates: a part has no loader, so they could only fail.
_LOADING_TAGS: dict[type[nodes.Node], str] = {
    nodes.Extends: "extends",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
}


def _compile(
    env: SandboxedEnvironment,
    source: str,
    *,
    channel: str,
    part: str,
    fields: Collection[str] | None,
) -> _Part:
    try:
        ast = env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"syntax error at line {exc.lineno}: {exc.message}", channel=channel, part=part
        ) from None
    for node in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        tag = _LOADING_TAGS[type(node)]
        raise TemplateError(
            f"line {node.lineno}: {{% {tag} %}} is not supported: a template part is one "
            "self-contained text (there are no template files to load)",
            channel=channel,
            part=part,
        )
    # Jinja defers an unknown filter or test inside an {% if %} to render time; find
    # every one now, so that validate names it rather than each message failing.
    for call in ast.find_all((nodes.Filter, nodes.Test)):
        kind, known = (
            ("filter", env.filters) if isinstance(call, nodes.Filter) else ("test", env.tests)
        )
        if call.name not in known:
            raise TemplateError(
                f"line {call.lineno}: No {kind} named {call.name!r}.", channel=channel, part=part
            )
    try:
        template = env.from_string(ast)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"line {exc.lineno}: {exc.message}", channel=channel, part=part
        ) from None
    if fields is not None:
        missing = sorted(jinja2.meta.find_undeclared_variables(ast) - set(fields) - _BUILTINS)
        if missing:
            raise TemplateError(
                f"references field(s) the segment does not have: {', '.join(missing)} "
                f"(available: {', '.join(sorted(fields))})",
                channel=channel,
                part=part,
            )
    convert = markupsafe.escape if env.autoescape else str
    return _Part(template, _pieces(env, ast), convert)


@attrs.frozen
class CompiledTemplate:
    """A channel's template, compiled once per run; safe to share between threads."""

    channel: str
    parts: Mapping[str, _Part]
    data: Mapping[str, _Part]

    def render(self, context: Mapping[str, Any]) -> dict[str, Any]:
        """Render every part for one recipient.

        Returns:
            ``{"body": ..., "subject": ..., "html": ..., "title": ..., "data": {...}}``
            with only the parts the template has.

        Raises:
            TemplateError: a value is undefined for this recipient, the sandbox
                refused an operation, or an expression failed (``{{ 1 / 0 }}``).
        """
        out: dict[str, Any] = {}
        # One variable mapping shared by the parts Jinja renders, made on first use
        # (Template.render would merge the environment's globals into a new one per part).
        merged: list[dict[str, Any]] = []

        def variables() -> dict[str, Any]:
            if not merged:
                merged.append({**_TEXT_ENV.globals, **context})
            return merged[0]

        try:
            for name, part in self.parts.items():
                out[name] = part.render(context, variables)
            if self.data:
                out["data"] = {k: p.render(context, variables) for k, p in self.data.items()}
        except jinja2.UndefinedError as exc:
            raise TemplateError(exc.message or "undefined value", channel=self.channel) from None
        except SecurityError as exc:
            raise TemplateError(f"unsafe template operation: {exc}", channel=self.channel) from None
        except Exception as exc:  # e.g. {{ 1 / 0 }}, {{ name + 1 }}: this recipient's failure
            raise TemplateError(
                f"cannot render: {type(exc).__name__}: {exc}", channel=self.channel
            ) from None
        return out


def _render(template: jinja2.Template, variables: dict[str, Any]) -> str:
    """``template.render(variables)`` without copying ``variables`` (which already hold
    the globals); errors are rewritten by Jinja as ``render`` would."""
    try:
        return "".join(template.root_render_func(template.new_context(variables, shared=True)))
    except Exception:
        return template.environment.handle_exception()


def compile_template(
    template: Template,
    *,
    channel: str,
    fields: Collection[str] | None = None,
    extra: Mapping[str, str | None] | None = None,
) -> CompiledTemplate:
    """Compile ``template``; with ``fields``, every referenced variable must be one of them.

    ``extra`` adds plain-text parts rendered alongside (the channel's
    ``unsubscribe_url`` and ``unsubscribe_mailto``); ``None`` values are left out.

    Raises:
        TemplateError: naming the channel and part, for a syntax error or a field the
            segment does not have.
    """
    parts = template.parts()
    parts.update({k: v for k, v in (extra or {}).items() if v is not None})
    if "body" not in parts and "html" not in parts:
        raise TemplateError(
            "a template needs a body (or html for email)", channel=channel, part="body"
        )
    compiled = {
        part: _compile(
            _HTML_ENV if part == "html" else _TEXT_ENV,
            src,
            channel=channel,
            part=part,
            fields=fields,
        )
        for part, src in parts.items()
    }
    data = {
        key: _compile(_TEXT_ENV, src, channel=channel, part=f"data.{key}", fields=fields)
        for key, src in template.data.items()
    }
    return CompiledTemplate(channel, compiled, data)


def template_problems(
    template: Template,
    *,
    channel: str,
    fields: Collection[str] | None = None,
    extra: Mapping[str, str | None] | None = None,
) -> list[TemplateError]:
    """Every error :func:`compile_template` could raise for ``template``, one per part
    (all parts are compiled, not only up to the first failure); empty when it compiles."""
    parts = template.parts()
    parts.update({k: v for k, v in (extra or {}).items() if v is not None})
    errors = []
    if "body" not in parts and "html" not in parts:
        errors.append(
            TemplateError(
                "a template needs a body (or html for email)", channel=channel, part="body"
            )
        )
    sources = [
        (part, _HTML_ENV if part == "html" else _TEXT_ENV, src) for part, src in parts.items()
    ]
    sources += [(f"data.{key}", _TEXT_ENV, src) for key, src in template.data.items()]
    for part, env, src in sources:
        try:
            _compile(env, src, channel=channel, part=part, fields=fields)
        except TemplateError as exc:
            errors.append(exc)
    return errors
