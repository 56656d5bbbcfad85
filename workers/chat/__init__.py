"""Chats: one exchange with the model, streamed to Redis, logged and metered.

actor.py     the `run_chat` actor, its retry rule, and `enqueue_chat` for Python apps
exchange.py  one run of a chat: its lease, its stream, and the order of its steps
record.py    its Postgres row: opened (admitted or refused), then finished and metered
model_call.py  the streamed model call and its retries
upstream.py  reading the model's stream (the SDK makes the call, orjson reads chunks)
reply.py     what the model sent back, and how an exchange ended
"""
