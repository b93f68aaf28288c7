"""The OpenAI-compatible HTTP API on the engine (FastAPI on uvicorn): /v1/completions, /v1/chat/completions,
/v1/models, /health and /metrics. Each request's sequences are submitted to the engine of the model it names;
the engine's thread hands their tokens to the request's asyncio queue. Errors answer in OpenAI's shape with
the right status, and one request's error never touches another's."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from llmlab.errors import LlmlabError
from llmlab.retrieval.index import Index
from llmlab.serve.api import ChatRequest, CompletionRequest, error_body
from llmlab.serve.chat_request import request_grammar, request_tools, template_messages
from llmlab.serve.engine import Engine, Event, QueueFull, Sequence
from llmlab.serve.metrics import ServerMetrics
from llmlab.serve.models import ServedModel
from llmlab.serve.rag import DEFAULT_RESERVE, Retrieved, retrieve
from llmlab.tools.calls import parse_call
from llmlab.tools.functions import Tool


@dataclass
class ServeSettings:
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    request_timeout: float = 600.0
    created: int = field(default_factory=lambda: int(time.time()))


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(message, kind, param, code), headers


def create_app(models: list[ServedModel], settings: ServeSettings, index: Index | None = None) -> FastAPI:
    """The app; `index` (llmlab serve --index) answers chat requests that ask for `rag`."""
    served = {m.name: m for m in models}
    engines = list({id(m.engine): m.engine for m in models}.values())  # adapters share their base's
    metrics = ServerMetrics(engines)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for engine in engines:
            engine.start()
        yield
        for engine in engines:
            engine.stop()

    app = FastAPI(title="llmlab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        started, endpoint = time.perf_counter(), request.url.path
        try:
            _authorise(request, settings)
            _check_size(request, settings)
            response = await call_next(request)
        except ApiError as exc:
            response = JSONResponse(exc.body, exc.status, headers=exc.headers)
        metrics.request(endpoint, response.status_code, time.perf_counter() - started)
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body, exc.status, headers=exc.headers)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": list(served)}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def list_models() -> dict:
        data = [{"id": name, "object": "model", "created": settings.created, "owned_by": "llmlab"} for name in served]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await _parse(request, CompletionRequest, settings)
        model = _model(served, body.model)
        prompts = [model.prompt_ids(p) for p in body.prompt]
        jobs = [(i, ids, body.sampling(16, body.logprobs, c)) for i, ids in enumerate(prompts) for c in range(body.n)]
        run = await _submit(model, jobs, metrics)
        echo = [p if body.echo else "" for p in body.prompt for _ in range(body.n)]
        shape = CompletionShape(body.model, model.engine.tokenizer, echo)
        return await _respond(run, shape, body, settings)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await _parse(request, ChatRequest, settings)
        model = _model(served, body.model)
        if body.max_completion_tokens:
            body.max_tokens = body.max_completion_tokens
        tools, bound, retrieved, ids = await _chat_input(model, body, index)
        room = model.engine.room(len(ids))
        if model.template.origin == "llmlab default":  # the default template's next turn: not the reply's
            body.stop = [*(body.stop or []), "\n<|user|>"]
        jobs = [(0, ids, replace(body.sampling(room, body.chat_logprobs(), c), grammar=bound)) for c in range(body.n)]
        run = await _submit(model, jobs, metrics)
        calls = tools if body.tool_choice != "none" else []
        shape = ChatShape(body.model, model.engine.tokenizer, calls, retrieved)
        return await _respond(run, shape, body, settings)

    return app


async def _chat_input(model: ServedModel, body: ChatRequest, index: Index | None):
    """The request's tools, its grammar bound to the engine, what retrieval found, and its prompt's token ids;
    a bad tool, schema, message or rag request is a 400."""
    try:
        tools = request_tools(body)
        grammar = request_grammar(body, tools)
        bound = None if grammar is None else await asyncio.to_thread(model.engine.bind, grammar)
        messages, retrieved = template_messages(body, tools), None
        if body.rag is not None:
            budget = model.engine.prompt_room(body.max_tokens or DEFAULT_RESERVE)
            retrieved = await asyncio.to_thread(retrieve, index, body.rag, messages, model.chat_ids_count, budget)
            messages = retrieved.messages
        return tools, bound, retrieved, model.chat_ids(messages)
    except LlmlabError as exc:
        raise ApiError(400, str(exc), param=_param(str(exc))) from None


def _param(message: str) -> str | None:
    """Which request field a chat request's error is about, for OpenAI's `param`."""
    if "index" in message or "rag" in message or "question and instruction" in message:
        return "rag"
    for name in ("response_format", "tool_choice", "tool call arguments", "tool"):
        if name in message:
            return {"tool call arguments": "messages", "tool": "tools"}.get(name, name)
    return "messages" if "template" in message else None


def _authorise(request: Request, settings: ServeSettings) -> None:
    if settings.api_key is None or request.url.path == "/health":
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), settings.api_key.encode()):
        raise ApiError(401, "missing or wrong API key: send Authorization: Bearer KEY", code="invalid_api_key")


def _check_size(request: Request, settings: ServeSettings) -> None:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
        raise ApiError(413, f"the request body has {length} bytes, more than the {settings.max_body_bytes} allowed")


async def _parse(request: Request, kind: type[BaseModel], settings: ServeSettings):
    raw = await request.body()
    if len(raw) > settings.max_body_bytes:
        raise ApiError(413, f"the request body has {len(raw)} bytes, more than the {settings.max_body_bytes} allowed")
    try:
        return kind.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(400, f"{param}: {first['msg']}", param=param) from None


def _model(served: dict[str, ServedModel], name: str) -> ServedModel:
    if name not in served:
        raise ApiError(404, f"the model {name!r} does not exist; served: {', '.join(served)}", param="model",
                       code="model_not_found")  # fmt: skip
    return served[name]


@dataclass
class Run:
    """A request's sequences and the queue their engine thread fills: (choice index, event)."""

    engine: Engine
    sequences: list[Sequence]
    queue: asyncio.Queue
    prompts: dict[int, int]  # prompt index -> its tokens (a prompt's n choices share it)


async def _submit(model: ServedModel, jobs: list, metrics: ServerMetrics) -> Run:
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    run = Run(model.engine, [], queue, {})
    try:
        for choice, (prompt, ids, sampling) in enumerate(jobs):
            emit = _emitter(loop, queue, choice)
            run.sequences.append(model.engine.submit(ids, sampling, emit, model.adapter))
            run.prompts[prompt] = len(ids)
    except QueueFull as exc:
        _cancel(run)
        raise ApiError(429, f"the server is busy ({exc}); retry shortly", kind="rate_limit_error",
                       headers={"Retry-After": "1"}) from None  # fmt: skip
    except LlmlabError as exc:
        _cancel(run)
        raise ApiError(400, str(exc), param="max_tokens", code="context_length_exceeded") from None
    metrics.prompt_tokens(sum(run.prompts.values()))
    return run


def _emitter(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, choice: int):
    def emit(event: Event) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (choice, event))

    return emit


def _cancel(run: Run) -> None:
    for seq in run.sequences:
        run.engine.cancel(seq)


async def _events(run: Run, timeout: float) -> AsyncIterator[tuple[int, Event]]:
    """Every choice's events until all have finished; cancels them all if the caller stops listening."""
    open_choices, deadline = len(run.sequences), time.monotonic() + timeout
    try:
        while open_choices:
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError
            choice, event = await asyncio.wait_for(run.queue.get(), left)
            if event.finish_reason is not None:
                open_choices -= 1
            yield choice, event
    finally:
        if open_choices:  # a disconnect, a timeout or an error: free the slots now
            _cancel(run)


async def _respond(run: Run, shape, body, settings: ServeSettings) -> Response:
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(run, shape, include_usage, settings), media_type="text/event-stream")
    pieces: dict[int, list[Event]] = {i: [] for i in range(len(run.sequences))}
    try:
        async for choice, event in _events(run, settings.request_timeout):
            pieces[choice].append(event)
    except asyncio.TimeoutError:
        raise ApiError(504, f"the request took longer than {settings.request_timeout:g} s", kind="timeout") from None
    if any(events and events[-1].finish_reason == "error" for events in pieces.values()):
        raise ApiError(500, "decoding failed on the server (its log has the details)", kind="server_error")
    return JSONResponse(shape.whole(pieces, _usage(run, pieces)))


async def _sse(run: Run, shape, include_usage: bool, settings: ServeSettings) -> AsyncIterator[str]:
    pieces: dict[int, list[Event]] = {i: [] for i in range(len(run.sequences))}
    if hasattr(shape, "first_chunks"):
        for chunk in shape.first_chunks(len(run.sequences)):
            yield _data(chunk)
    try:
        async for choice, event in _events(run, settings.request_timeout):
            pieces[choice].append(event)
            if event.finish_reason == "error":
                yield _data(error_body("decoding failed on the server (its log has the details)", "server_error"))
                continue
            chunk = shape.chunk(choice, event)
            if chunk is not None:
                yield _data(chunk)
    except asyncio.TimeoutError:
        yield _data(error_body(f"the request took longer than {settings.request_timeout:g} s", "timeout"))
    if include_usage:
        yield _data(shape.usage_chunk(_usage(run, pieces)))
    yield "data: [DONE]\n\n"


def _data(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _usage(run: Run, pieces: dict[int, list[Event]]) -> dict:
    prompt = sum(run.prompts.values())
    completion = sum(events[-1].completion_tokens for events in pieces.values() if events)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class CompletionShape:
    """/v1/completions' response objects."""

    def __init__(self, model: str, tokenizer, echo: list[str]) -> None:
        self.id, self.model, self.tokenizer, self.echo = f"cmpl-{uuid.uuid4().hex}", model, tokenizer, echo
        self.created = int(time.time())

    def _frame(self, choices: list[dict]) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices}  # fmt: skip

    def _logprobs(self, events: list[Event]) -> dict | None:
        scored = [e for e in events if e.logprob is not None]
        if not scored:
            return None
        tokens = [self.tokenizer.decode([e.token_id]) for e in scored]
        offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in scored],
                "top_logprobs": [e.top_logprobs for e in scored], "text_offset": offsets}  # fmt: skip

    def whole(self, pieces: dict[int, list[Event]], usage: dict) -> dict:
        choices = [{"index": i, "text": self.echo[i] + "".join(e.text for e in events),
                    "finish_reason": _reason(events[-1]), "logprobs": self._logprobs(events)}
                   for i, events in sorted(pieces.items())]  # fmt: skip
        return {**self._frame(choices), "usage": usage}

    def chunk(self, choice: int, event: Event) -> dict:
        return self._frame([{"index": choice, "text": event.text, "logprobs": self._logprobs([event]),
                             "finish_reason": _reason(event)}])  # fmt: skip

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._frame([]), "usage": usage}


class ChatShape(CompletionShape):
    """/v1/chat/completions' response objects. With tools, a reply that is a call becomes `tool_calls` (finish
    reason "tool_calls"); a stream then holds the reply back until it ends, since its first tokens do not
    yet say whether it is a call."""

    def __init__(self, model: str, tokenizer, tools: list[Tool] | None = None, rag: Retrieved | None = None) -> None:
        super().__init__(model, tokenizer, [])
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.tools = tools or []
        self.held: dict[int, list[str]] = {}
        self.rag = rag  # retrieval's report goes in the response as `rag` (an llmlab extension)

    def _message(self, choice: int, text: str, reason: str | None) -> tuple[dict, str | None]:
        """The reply as a message (content, or tool_calls) and its finish reason."""
        call = parse_call(text, self.tools) if self.tools else None
        if call is None or call.name not in {t.name for t in self.tools}:  # only a declared tool is a call
            return {"content": text}, reason
        call_id = f"call_{self.id[-12:]}_{choice}"
        function = {"name": call.name, "arguments": json.dumps(call.arguments)}
        return {"content": None, "tool_calls": [{"id": call_id, "type": "function", "function": function}]}, (
            "tool_calls" if reason == "stop" else reason
        )

    def _frame(self, choices: list[dict], kind: str = "chat.completion") -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def _logprobs(self, events: list[Event]) -> dict | None:
        scored = [e for e in events if e.logprob is not None]
        if not scored:
            return None

        def entry(token: str, logprob: float) -> dict:
            return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

        content = [{**entry(self.tokenizer.decode([e.token_id]), e.logprob),
                    "top_logprobs": [entry(t, lp) for t, lp in (e.top_logprobs or {}).items()]}
                   for e in scored]  # fmt: skip
        return {"content": content}

    def whole(self, pieces: dict[int, list[Event]], usage: dict) -> dict:
        choices = []
        for i, events in sorted(pieces.items()):
            message, reason = self._message(i, "".join(e.text for e in events), _reason(events[-1]))
            choices.append({"index": i, "message": {"role": "assistant", **message}, "finish_reason": reason,
                            "logprobs": self._logprobs(events)})  # fmt: skip
        whole = {**self._frame(choices), "usage": usage}
        if self.rag is not None:
            whole["rag"] = self.rag.report(choices[0]["message"].get("content") or "")
        return whole

    def first_chunks(self, n: int) -> list[dict]:
        chunks = [self._frame([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None}], "chat.completion.chunk") for i in range(n)]  # fmt: skip
        if self.rag is not None:
            chunks[0]["rag"] = self.rag.report()
        return chunks

    def chunk(self, choice: int, event: Event) -> dict | None:
        delta, reason = ({"content": event.text} if event.text else {}), _reason(event)
        if self.tools:  # held back until the reply is whole
            self.held.setdefault(choice, []).append(event.text)
            if reason is None:
                return None
            delta, reason = self._message(choice, "".join(self.held.pop(choice)), reason)
            if "tool_calls" in delta:
                delta = {"tool_calls": [{"index": 0, **delta["tool_calls"][0]}]}
        return self._frame([{"index": choice, "delta": delta, "logprobs": self._logprobs([event]),
                             "finish_reason": reason}], "chat.completion.chunk")  # fmt: skip

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._frame([], "chat.completion.chunk"), "usage": usage}


def _reason(event: Event) -> str | None:
    """OpenAI's finish reasons: stop (end of sequence or a stop string), length; a cancelled one is neither."""
    return event.finish_reason if event.finish_reason in ("stop", "length", None) else "stop"
