"""/docs: the API reference as one HTML page, built on the server from the app's OpenAPI schema.

FastAPI's own /docs (Swagger UI) and /redoc load their JavaScript and CSS from cdn.jsdelivr.net, so
offline, or on a machine that may not reach the internet, they are blank pages. No package imgcls
installs ships those assets, so this page is written by hand: every endpoint with its parameters,
request body, answers and a curl line, with no script and nothing fetched. The machine-readable
schema stays at /openapi.json, for Swagger UI or any client generator that a user runs elsewhere.
"""
from __future__ import annotations

from html import escape

DOCS_POLICY = "default-src 'none'; style-src 'unsafe-inline'"  # the page needs nothing but its own inline CSS
METHODS = ("get", "post", "put", "patch", "delete")
CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330; max-width: 960px;
       margin: 0 auto; padding: 1rem 1.2rem 3rem; }
h2 { font-size: 1.1rem; margin: 2rem 0 .3rem; font-family: ui-monospace, Menlo, Consolas, monospace; }
h2 .method { color: #fff; background: #2f6fde; border-radius: 4px; padding: 0 .4rem; margin-right: .4rem; }
pre, code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
pre { background: #f3f4f7; padding: .6rem .8rem; overflow-x: auto; white-space: pre-wrap; }
table { border-collapse: collapse; } th, td { text-align: left; padding: .2rem .8rem .2rem 0; vertical-align: top; }
th { white-space: nowrap; }
.muted { color: #5d6678; }
"""


def _schema_text(schema: dict) -> str:
    """'integer, 1-1000, default 5' from a parameter's JSON schema."""
    options = schema.get("anyOf", [schema])  # Optional[x] is anyOf [x, null]
    kind = " or ".join(option.get("type", "?") for option in options if option.get("type") != "null")
    bounds = [schema.get(key, options[0].get(key)) for key in ("minimum", "maximum")]
    parts = [kind + (" or null" if len(options) > 1 else "")]
    if "enum" in schema:
        parts.append("one of " + ", ".join(map(str, schema["enum"])))
    if any(bound is not None for bound in bounds):
        parts.append("-".join("" if bound is None else f"{bound:g}" for bound in bounds))
    if "default" in schema:
        parts.append(f"default {schema['default']}")
    return ", ".join(parts)


def _operation(path: str, method: str, operation: dict, base_url: str) -> str:
    parameters = "".join(f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(_schema_text(p.get('schema', {})))}"
                         f"</td><td>{escape(p.get('description', ''))}</td></tr>" for p in operation.get("parameters", []))
    body = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data", {}).get("schema", {})
    fields = list(body.get("properties", {}))
    upload = "".join(f" -F {field}=@photo.jpg" for field in fields)
    answers = ", ".join(f"{code} {answer.get('description', '')}" for code, answer in operation.get("responses", {}).items())
    return (f'<h2><span class="method">{method.upper()}</span>{escape(path)}</h2>'
            f"<p>{escape(operation.get('description') or operation.get('summary', ''))}</p>"
            + (f"<table><tr><th>query parameter</th><th>type</th><th></th></tr>{parameters}</table>" if parameters else "")
            + (f"<p>Body: multipart/form-data with the image file(s) in <code>{escape(', '.join(fields))}</code>.</p>"
               if fields else "")
            + f"<pre>curl{' -X POST' if method == 'post' and not fields else ''}{upload} "
              f"{escape(base_url + path.lstrip('/'))}</pre>"
            + f'<p class="muted">answers: {escape(answers)}</p>')


def docs_html(spec: dict, base_url: str) -> str:
    """The page for OpenAPI `spec`, its curl lines pointing at `base_url` (ending in '/')."""
    info = spec.get("info", {})
    title, version = escape(info.get("title", "API")), escape(str(info.get("version", "")))
    operations = "".join(_operation(path, method, operation, base_url) for path, item in spec.get("paths", {}).items()
                         for method, operation in item.items() if method in METHODS)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title} - API</title><style>{CSS}</style></head><body>"
            f'<h1>{title} <span class="muted">{version}</span></h1>'
            f"<p>{escape(info.get('description', ''))} The OpenAPI schema is at "
            f'<a href="openapi.json">/openapi.json</a>; the page for people is at <a href="./">/</a>.</p>'
            f"{operations}</body></html>")
