"""The tables: `posts` and `comments` in the source database, the read model in another.

Each transaction in the source ends up in the read model `post_with_comments_counts`
through the operator (projector.py). `comments` has REPLICA IDENTITY FULL so that a
deleted comment's change says which post it belonged to.
"""

from __future__ import annotations

SOURCE_DATABASE = "posts_source"
TARGET_DATABASE = "posts_read"
PUBLICATION = "posts_publication"
SLOT = "posts_read_model"

SOURCE = """
CREATE TABLE posts (
    id bigserial PRIMARY KEY,
    title text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE comments (
    id bigserial PRIMARY KEY,
    post_id bigint NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    body text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
ALTER TABLE comments REPLICA IDENTITY FULL;
CREATE PUBLICATION posts_publication FOR TABLE posts, comments;
"""

TARGET = """
CREATE TABLE post_with_comments_counts (
    id bigint PRIMARY KEY,
    title text NOT NULL,
    comments_count integer NOT NULL DEFAULT 0
);
"""
