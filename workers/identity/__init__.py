"""Identity: Clerk's users mirrored in Postgres, whatever the order of their events.

actor.py     the `apply_clerk_event` actor and its retry rule
grouping.py  the events a process holds, applied together, one transaction a group
apply.py     applying a group of parsed events (one call of aiwrap_apply_clerk_events)
"""
