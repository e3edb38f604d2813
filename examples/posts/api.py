"""The example's API: writes go to the source database, reads come from the read model.

    POST /posts                       {"title": ...}  -> 201 {"id": ..}, token posts/<lsn>
    POST /posts/{id}/comments         {"body": ...}   -> 201 {"id": ..}, token comments/<lsn>
    GET  /post_with_comments_counts/{id}              -> 200 {"id", "title", "comments_count"}

Each write answers with `X-Event-Streamex-Entity-Timestamp: <table>/<commit position>`
(the kit's `commit_with_position`). The gateway in front (nginx with the project's gate
config) holds a read that carries it back until the operator has recorded that
position, so the read never sees the read model before the write.

    python -m examples.posts.api --source-dsn ... --target-dsn ... --bind 127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any, TypeVar

from aiohttp import web
from process_status_postgres import HEADER, commit_with_position, token
from psycopg2.pool import ThreadedConnectionPool

T = TypeVar("T")
pools_key = web.AppKey("pools", dict[str, ThreadedConnectionPool])


def problem(status: int, detail: str) -> web.Response:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
            "detail": detail}
    return web.Response(status=status, text=json.dumps(body),
                        content_type="application/problem+json")


async def in_thread(request: web.Request, database: str, work: Callable[[Any], T]) -> T:
    """Run `work(connection)` on a pooled psycopg2 connection, off the event loop."""
    pool = request.app[pools_key][database]

    def run() -> T:
        connection = pool.getconn()
        try:
            return work(connection)
        except BaseException:
            connection.rollback()
            raise
        finally:
            pool.putconn(connection)

    return await asyncio.get_running_loop().run_in_executor(None, run)


async def text_field(request: web.Request, name: str) -> str | web.Response:
    try:
        body = await request.json()
    except ValueError:
        return problem(400, f'expected a JSON object like {{"{name}": "..."}}')
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        return problem(400, f'expected a JSON object like {{"{name}": "..."}}')
    return value


async def create_post(request: web.Request) -> web.Response:
    title = await text_field(request, "title")
    if isinstance(title, web.Response):
        return title

    def write(connection: Any) -> tuple[int, int]:
        with connection.cursor() as cur:
            cur.execute("INSERT INTO posts (title) VALUES (%s) RETURNING id", (title,))
            post_id = int(cur.fetchone()[0])
        return post_id, commit_with_position(connection)

    post_id, lsn = await in_thread(request, "source", write)
    return web.json_response({"id": post_id}, status=201, headers={
        HEADER: token("posts", lsn), "Location": f"/post_with_comments_counts/{post_id}"})


async def create_comment(request: web.Request) -> web.Response:
    body = await text_field(request, "body")
    if isinstance(body, web.Response):
        return body
    post_id = int(request.match_info["id"])

    def write(connection: Any) -> tuple[int, int] | None:
        with connection.cursor() as cur:
            cur.execute("INSERT INTO comments (post_id, body) SELECT id, %s FROM posts "
                        "WHERE id = %s RETURNING id", (body, post_id))
            row = cur.fetchone()
        if row is None:
            connection.rollback()
            return None
        return int(row[0]), commit_with_position(connection)

    written = await in_thread(request, "source", write)
    if written is None:
        return problem(404, f"there is no post {post_id}")
    comment_id, lsn = written
    return web.json_response({"id": comment_id, "post_id": post_id}, status=201,
                             headers={HEADER: token("comments", lsn)})


async def read_counts(request: web.Request) -> web.Response:
    post_id = int(request.match_info["id"])

    def read(connection: Any) -> tuple[Any, ...] | None:
        with connection.cursor() as cur:
            cur.execute("SELECT id, title, comments_count FROM post_with_comments_counts "
                        "WHERE id = %s", (post_id,))
            row = cur.fetchone()
        connection.rollback()  # read-only: end the transaction, keep no snapshot open
        return row  # type: ignore[no-any-return]

    row = await in_thread(request, "target", read)
    if row is None:
        return problem(404, f"post {post_id} is not in the read model")
    return web.json_response({"id": row[0], "title": row[1], "comments_count": row[2]})


def create_app(source_dsn: str, target_dsn: str) -> web.Application:
    app = web.Application()

    async def pools(app: web.Application) -> AsyncIterator[None]:
        app[pools_key] = {"source": ThreadedConnectionPool(1, 32, source_dsn),
                          "target": ThreadedConnectionPool(1, 32, target_dsn)}
        yield
        for pool in app[pools_key].values():
            with contextlib.suppress(Exception):
                pool.closeall()

    app.cleanup_ctx.append(pools)
    app.router.add_post("/posts", create_post)
    app.router.add_post(r"/posts/{id:\d+}/comments", create_comment)
    app.router.add_get(r"/post_with_comments_counts/{id:\d+}", read_counts)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-dsn", required=True)
    parser.add_argument("--target-dsn", required=True)
    parser.add_argument("--bind", default="127.0.0.1:9000", help="HOST:PORT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    host, _, port = args.bind.rpartition(":")
    web.run_app(create_app(args.source_dsn, args.target_dsn), host=host, port=int(port),
                access_log=None, print=functools.partial(print, "api:", flush=True))


if __name__ == "__main__":
    main()
