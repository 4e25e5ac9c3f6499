"""Rollouts: how a served model's traffic is split (routes, variants, canary schedules and
limits, shadows) and the commands that change it in the running application together with the
registry (blue/green switch, canary, rollback).

It sits below `serve/`, whose router applies these routes, and below the callers that move
traffic (the `rayapp deploy` CLI, the retraining loop's canary), so that none of them needs the
Serve deployments to decide or record a rollout.
"""
