"""The Lua scripts of the Redis transport: every step that must be atomic on the server.

Each script that changes a delivered entry first checks, with ``XPENDING stream group ID ID
1 ME``, that this worker still owns it: a worker that lost its lease (stopped, cut off, its
entry reclaimed by another) can no longer renew, store a result or acknowledge.

:func:`load_scripts` is the stable entry point (the bench's floor consumer imports it to do
exactly the per-job Redis work of a worker).  Arguments are documented per script as
``KEYS`` / ``ARGV``; every key comes from :class:`.keys.Keys`, so one pool's keys share a
Cluster slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: dead-letter stream length bound (approximate: MAXLEN ~)
DEAD_MAXLEN = 100000

_PRELUDE = r"""
local function owned(stream, group, id, me)
  return #redis.call('XPENDING', stream, group, id, id, 1, me) == 1
end
local FINAL = {completed=true, failed=true, timeout=true, cancelled=true, rejected=true}
-- copy entry id of stream into the dead-letter stream with the reason, then ack and delete it
local function dead_letter(stream, dead, running, group, id, me, reason, detail, maxlen)
  local args = {dead, 'MAXLEN', '~', maxlen, '*', 'reason', reason, 'detail', detail,
                'entry', id, 'worker', me, 'stream', stream}
  local e = redis.call('XRANGE', stream, id, id)
  if #e == 1 then
    local f = e[1][2]
    for i = 1, math.min(#f, 64) do args[#args + 1] = f[i] end
  end
  redis.call('XADD', unpack(args))
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
  redis.call('HDEL', running, id)
end
-- record that worker me starts entry id of job hash job (when that hash names the entry)
local function mark_started(running, job, id, me, started_at, attempt)
  redis.call('HSET', running, id, me)
  if redis.call('HGET', job, 'entry') == id then
    redis.call('HSET', job, 'status', 'running', 'worker_id', me, 'started_at', started_at)
    if attempt then redis.call('HSET', job, 'attempt', attempt) end
  end
end
-- queue a job document again as a new entry; job hash job (if it names entry old) follows it
local function add_entry(stream, job, old, doc)
  local jid = redis.call('HGET', job, 'job_id')
  if jid and redis.call('HGET', job, 'entry') == old then
    return redis.call('XADD', stream, '*', 'job', doc, 'job_id', jid), true
  end
  return redis.call('XADD', stream, '*', 'job', doc), false
end
"""

SOURCES: dict[str, str] = {
    # KEYS jobs, job, index; ARGV doc, job_id, digest, operation, cancellable(1|0), attempt,
    # submitted_at -> {created|exists|conflict, status, entry}
    "submit": r"""
local h = redis.call('HMGET', KEYS[2], 'status', 'digest', 'entry', 'unrun')
if h[1] and h[4] ~= '1' then
  if h[2] == ARGV[3] then return {'exists', h[1], h[3] or ''} end
  return {'conflict', h[1], h[3] or ''}
end
if h[1] then redis.call('DEL', KEYS[2]) end  -- dead-lettered before it ever ran: not a job
local id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[1], 'job_id', ARGV[2])
redis.call('HSET', KEYS[2], 'job_id', ARGV[2], 'status', 'pending', 'entry', id, 'digest', ARGV[3],
           'operation', ARGV[4], 'cancellable', ARGV[5], 'attempt', ARGV[6], 'submitted_at', ARGV[7])
redis.call('ZADD', KEYS[3], tonumber(string.match(id, '^(%d+)')), ARGV[2])
return {'created', 'pending', id}
""",
    # KEYS jobs, dead, running, job, index[, result]; ARGV group, me, entry, job_id, digest,
    # operation, cancellable, attempt, submitted_at, maxlen[, started_at]
    # -> ok | started | stored | duplicate | lost
    # A delivered entry becomes a known job (entries XADDed by other producers have no job
    # hash yet); an entry whose job id another entry already holds is a duplicate: dead letter,
    # unless that entry was dead-lettered before it ran (unrun): then this entry is the job.
    # 'stored' (with the result key given): admitted, and a result is stored under the job id
    # already ('ok': none is; only this entry's commit can store one while it is owned).
    # With started_at: an admitted entry with no result stored is also marked started
    # ('started'), as the take script does.
    "admit": r"""
if not owned(KEYS[1], ARGV[1], ARGV[3], ARGV[2]) then return 'lost' end
local function admitted()
  if KEYS[6] and redis.call('EXISTS', KEYS[6]) == 1 then return 'stored' end
  if ARGV[11] then
    mark_started(KEYS[3], KEYS[4], ARGV[3], ARGV[2], ARGV[11], ARGV[8])
    return 'started'
  end
  return 'ok'
end
local e = redis.call('HGET', KEYS[4], 'entry')
if e and e ~= ARGV[3] and redis.call('HGET', KEYS[4], 'unrun') == '1' then
  redis.call('DEL', KEYS[4])  -- its only entry was dead-lettered before it ran: this one is the job
  e = nil
end
if not e then
  redis.call('HSET', KEYS[4], 'job_id', ARGV[4], 'status', 'pending', 'entry', ARGV[3], 'digest', ARGV[5],
             'operation', ARGV[6], 'cancellable', ARGV[7], 'attempt', ARGV[8], 'submitted_at', ARGV[9])
  redis.call('ZADD', KEYS[5], tonumber(string.match(ARGV[3], '^(%d+)')), ARGV[4])
  return admitted()
end
if e == ARGV[3] then return admitted() end
dead_letter(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[3], ARGV[2], 'duplicate_job_id',
            'job ' .. ARGV[4] .. ' is already known as entry ' .. e, ARGV[10])
return 'duplicate'
""",
    # KEYS jobs, dead, running[, job]; ARGV group, me, entry, reason, detail, maxlen, ttl,
    # error json[, unrun: '1' when its handler never started] -> 1 | 0 (not owned)
    # An unrun job's id is free again: a new submission or entry of it is the job (submit, admit).
    "dead": r"""
if not owned(KEYS[1], ARGV[1], ARGV[3], ARGV[2]) then return 0 end
dead_letter(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[3], ARGV[2], ARGV[4], ARGV[5], ARGV[6])
if KEYS[4] and redis.call('HGET', KEYS[4], 'entry') == ARGV[3] then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[4], 'status', 'failed', 'error', ARGV[8], 'completed_at', t[1])
  if ARGV[9] == '1' then redis.call('HSET', KEYS[4], 'unrun', '1') end
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[7]))
end
return 1
""",
    # KEYS jobs; ARGV group, me, entry -> 1 (idle time reset) | 0 (lost)
    "renew": r"""
if not owned(KEYS[1], ARGV[1], ARGV[3], ARGV[2]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
""",
    # KEYS jobs, running, job; ARGV group, me, entry, attempt, started_at -> 1 | 0 (lost)
    "start": r"""
if not owned(KEYS[1], ARGV[1], ARGV[3], ARGV[2]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
mark_started(KEYS[2], KEYS[3], ARGV[3], ARGV[2], ARGV[5], ARGV[4])
return 1
""",
    # KEYS jobs, running; ARGV group, me, how many, started_at, key prefix of the pool
    # -> {{entry, fields, verdict}, ...}
    # Reads up to 'how many' new entries for this consumer (never blocks: a script cannot) and,
    # for each entry whose job hash (named by its job_id field) names that very entry, admits
    # and starts it in the same step: 'started', or 'stored' (a result is kept under the job
    # id: admitted, not started).  'new': no job_id field, or no job hash naming the entry (an
    # entry XADDed by another producer): the caller admits it with the admit script.  The
    # job_id field is only a hint: the job hash, written by submit, decides.  Keys built here
    # share the pool's hash tag (one Cluster slot).
    "take": r"""
local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
local out = {}
if not r then return out end
for _, e in ipairs(r[1][2]) do
  local id, f, jid, verdict = e[1], e[2] or {}, nil, 'new'
  for i = 1, #f - 1, 2 do
    if f[i] == 'job_id' then jid = f[i + 1] break end
  end
  if jid then
    local jk = ARGV[5] .. 'job:' .. jid
    if redis.call('HGET', jk, 'entry') == id then
      if redis.call('EXISTS', ARGV[5] .. 'result:' .. jid) == 1 then
        verdict = 'stored'
      else
        mark_started(KEYS[2], jk, id, ARGV[2], ARGV[4], nil)
        verdict = 'started'
      end
    end
  end
  out[#out + 1] = {id, f, verdict}
end
return out
""",
    # KEYS jobs, dead, running, job, result, progress, idem; ARGV group, me, entry, result,
    # ttl, status, ended_at, error json, idem mode (complete|release|''), job_id, dead reason
    # ('' for none), dead detail, maxlen, document to queue again ('' for none)
    # -> 1 | 2 (stored already by this worker: a retried commit whose reply was lost) | 0 (lost)
    # Result stored, job state set, idempotency key kept or released, entry acked and deleted:
    # one step.  Only the entry the job hash names may write the job's state and result (a
    # duplicate delivery never replaces the real job's result).
    "commit": r"""
if not owned(KEYS[1], ARGV[1], ARGV[3], ARGV[2]) then
  if ARGV[10] ~= '' then  -- this very commit ran before and its reply was lost: say so
    local h = redis.call('HMGET', KEYS[4], 'entry', 'committed_by', 'status')
    if h[1] == ARGV[3] and h[2] == ARGV[2] and FINAL[h[3]] then return 2 end
  end
  return 0
end
local ttl = tonumber(ARGV[5])
if ARGV[10] ~= '' and redis.call('HGET', KEYS[4], 'entry') == ARGV[3] then
  if ARGV[4] ~= '' then redis.call('SET', KEYS[5], ARGV[4], 'EX', ttl) end
  redis.call('HSET', KEYS[4], 'status', ARGV[6], 'completed_at', ARGV[7], 'error', ARGV[8],
             'committed_by', ARGV[2])
  redis.call('HDEL', KEYS[4], 'cancel')
  redis.call('EXPIRE', KEYS[4], ttl)
  redis.call('EXPIRE', KEYS[6], ttl)
  if ARGV[9] == 'complete' then
    redis.call('HSET', KEYS[7], 'job_id', ARGV[10], 'state', 'completed')
    redis.call('EXPIRE', KEYS[7], ttl)
  end
end
if ARGV[9] == 'release' then
  local h = redis.call('HMGET', KEYS[7], 'job_id', 'state')
  if h[1] == ARGV[10] and h[2] ~= 'completed' then redis.call('DEL', KEYS[7]) end
end
if ARGV[11] ~= '' then
  dead_letter(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[3], ARGV[2], ARGV[11], ARGV[12], ARGV[13])
elseif ARGV[14] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  redis.call('XDEL', KEYS[1], ARGV[3])
  redis.call('HDEL', KEYS[3], ARGV[3])
  local id, mine = add_entry(KEYS[1], KEYS[4], ARGV[3], ARGV[14])
  if mine then
    redis.call('HSET', KEYS[4], 'entry', id, 'status', 'pending')
    redis.call('HDEL', KEYS[4], 'worker_id', 'started_at', 'completed_at')
    redis.call('PERSIST', KEYS[4])
  end
else
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  redis.call('XDEL', KEYS[1], ARGV[3])
  redis.call('HDEL', KEYS[3], ARGV[3])
end
return 1
""",
    # KEYS jobs, running, job; ARGV group, me, entry, doc, attempt -> new entry id | 0 (lost)
    # Retry and release: ack + delete + XADD of the (rewritten) document, atomically.
    "requeue": r"""
if not owned(KEYS[1], ARGV[1], ARGV[3], ARGV[2]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[3])
local id, mine = add_entry(KEYS[1], KEYS[3], ARGV[3], ARGV[4])
if mine then
  redis.call('HSET', KEYS[3], 'entry', id, 'status', 'pending', 'attempt', ARGV[5])
  redis.call('HDEL', KEYS[3], 'worker_id', 'started_at')
end
return id
""",
    # KEYS jobs, running; ARGV group, me, min idle ms, how many, how many to look at,
    # entry ids this worker holds (space-separated: skipped)
    # -> {{entry, fields, delivery count, previous owner, worker that started it or ''}, ...}
    # Takes over entries idle longer than the lease (XCLAIM with that min idle, so an entry
    # renewed meanwhile stays with its owner), this worker's own included unless it still
    # holds them (one it could not give back while Redis was away); entries deleted from the
    # stream are dropped from the pending list.
    "reclaim": r"""
local p = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[5])
local out, want, held = {}, tonumber(ARGV[4]), {}
for id in string.gmatch(ARGV[6] or '', '%S+') do held[id] = true end
for _, e in ipairs(p) do
  if #out >= want then break end
  local id, owner = e[1], e[2]
  if not (owner == ARGV[2] and held[id]) then
    local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], id)
    if type(c[1]) == 'table' then
      out[#out + 1] = {id, c[1][2], e[4] + 1, owner, redis.call('HGET', KEYS[2], id) or ''}
    elseif #redis.call('XRANGE', KEYS[1], id, id) == 0 then
      redis.call('XACK', KEYS[1], ARGV[1], id)
      redis.call('HDEL', KEYS[2], id)
    end
  end
end
return out
""",
    # KEYS jobs, running; ARGV group, me, start (id, '(' id for after), how many
    # -> like reclaim: this consumer's own pending entries (left by its previous life)
    "own": r"""
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], '+', ARGV[4], ARGV[2])
local out = {}
for _, e in ipairs(p) do
  local id = e[1]
  local r = redis.call('XRANGE', KEYS[1], id, id)
  if #r == 1 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)
    out[#out + 1] = {id, r[1][2], e[4] + 1, ARGV[2], redis.call('HGET', KEYS[2], id) or ''}
  else
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('HDEL', KEYS[2], id)
    out[#out + 1] = {id, {}, 0, ARGV[2], ''}
  end
end
return out
""",
    # KEYS idem, alive key of the holder's worker as read before (or of this worker);
    # ARGV job_id, me, holder's worker as read before ('' none), ttl
    # -> {won} | {running, holder} | {completed, holder} | {again} (the holder changed meanwhile)
    # A reservation whose worker's liveness key has expired (the worker died) is taken over.
    "reserve": r"""
local h = redis.call('HMGET', KEYS[1], 'job_id', 'state', 'worker')
if h[2] == 'completed' then return {'completed', h[1]} end
if (h[3] or '') ~= ARGV[3] then return {'again'} end
if h[1] and h[1] ~= ARGV[1] and h[3] and redis.call('EXISTS', KEYS[2]) == 1 then return {'running', h[1]} end
redis.call('HSET', KEYS[1], 'job_id', ARGV[1], 'state', 'running', 'worker', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return {'won'}
""",
    # KEYS idem; ARGV job_id -> 1 released | 0 not held by job_id
    "release_key": r"""
local h = redis.call('HMGET', KEYS[1], 'job_id', 'state')
if h[1] == ARGV[1] and h[2] ~= 'completed' then redis.call('DEL', KEYS[1]) return 1 end
return 0
""",
    # KEYS jobs, job, result; ARGV group, result json, ttl, ended_at, error json
    # -> cancelled | cancelling | finished | not_cancellable | not_found
    # A job still waiting in the stream (not delivered) is deleted and gets its result now;
    # a delivered or running one is flagged for its worker (cancel_requests).
    "cancel": r"""
local h = redis.call('HMGET', KEYS[2], 'status', 'entry', 'cancellable')
if not h[1] then return 'not_found' end
if FINAL[h[1]] then return 'finished' end
if h[1] == 'pending' and h[2] and #redis.call('XPENDING', KEYS[1], ARGV[1], h[2], h[2], 1) == 0 then
  redis.call('XDEL', KEYS[1], h[2])
  redis.call('SET', KEYS[3], ARGV[2], 'EX', tonumber(ARGV[3]))
  redis.call('HSET', KEYS[2], 'status', 'cancelled', 'completed_at', ARGV[4], 'error', ARGV[5])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
  return 'cancelled'
end
if h[3] == '0' then return 'not_cancellable' end
redis.call('HSET', KEYS[2], 'cancel', '1')
return 'cancelling'
""",
    # KEYS jobs; ARGV group -> {entries not yet delivered, age in ms of the oldest of them (-1: none)}
    # Not yet delivered: the group's lag, or when Redis cannot tell (null after a deletion) the
    # stream length minus the pending count, exact because acknowledged entries are deleted.
    # The oldest waiting entry is the first after the group's last-delivered-id; its id holds
    # its enqueue time, compared with the server's clock (no skew between hosts).
    "waiting": r"""
local len = redis.call('XLEN', KEYS[1])
local lag, pending, last = -1, 0, '0-0'
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(groups) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == ARGV[1] then
      pending, last = f['pending'], f['last-delivered-id']
      if f['lag'] then lag = f['lag'] end
    end
  end
end
local waiting = lag
if waiting < 0 then waiting = math.max(0, len - pending) end
local age = -1
if waiting > 0 then
  local e = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
  if #e == 1 then
    local t = redis.call('TIME')
    local enqueued = tonumber(string.match(e[1][1], '^(%d+)'))
    age = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - enqueued
  end
end
return {waiting, math.max(age, -1)}
""",
    # KEYS dead, jobs, index[, job]; ARGV dead entry, job_id, digest, operation, cancellable,
    # attempt, submitted_at -> {queued, new entry} | {not_found} | {refused, reason, detail}
    # A dead letter's original 'job' field queued again as a new entry and the dead letter
    # deleted, in one step.  The job hash follows the new entry when it is the job this dead
    # letter ended (it names the dead letter's entry), was dead-lettered before it ran, or is
    # gone; a job hash naming another entry makes it a duplicate: refused.
    "dead_requeue": r"""
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return {'not_found'} end
local f, doc, src = e[1][2], nil, nil
for i = 1, #f - 1, 2 do
  if f[i] == 'job' and not doc then doc = f[i + 1] end
  if f[i] == 'entry' and not src then src = f[i + 1] end
end
if not doc then return {'refused', 'no_job_field', 'the entry has no field job'} end
local id
if KEYS[4] then
  local h = redis.call('HMGET', KEYS[4], 'entry', 'unrun', 'status')
  if h[1] and h[1] ~= src and h[2] ~= '1' then
    return {'refused', 'duplicate_job_id',
            'job ' .. ARGV[2] .. ' is known as entry ' .. h[1] .. ' (' .. (h[3] or 'pending') .. ')'}
  end
  id = redis.call('XADD', KEYS[2], '*', 'job', doc, 'job_id', ARGV[2])
  redis.call('DEL', KEYS[4])
  redis.call('HSET', KEYS[4], 'job_id', ARGV[2], 'status', 'pending', 'entry', id, 'digest', ARGV[3],
             'operation', ARGV[4], 'cancellable', ARGV[5], 'attempt', ARGV[6], 'submitted_at', ARGV[7])
  redis.call('ZADD', KEYS[3], tonumber(string.match(id, '^(%d+)')), ARGV[2])
else
  id = redis.call('XADD', KEYS[2], '*', 'job', doc)
end
redis.call('XDEL', KEYS[1], ARGV[1])
return {'queued', id}
""",
    # KEYS dead; ARGV highest id ('+' or '(' id), how many
    # -> {{id, reason, detail, job_id field or a job_id read from a document under 64 KiB, or ''}, ...}
    # A page of dead letters newest first without their documents: a listing never carries
    # the (maybe huge) 'job' fields over the wire.  The job_id read here is only a candidate:
    # the caller checks it as the job layer does.
    "dead_page": r"""
local rows = redis.call('XREVRANGE', KEYS[1], ARGV[1], '-', 'COUNT', tonumber(ARGV[2]))
local out = {}
for _, e in ipairs(rows) do
  local f, keep = e[2], {}
  for i = 1, #f - 1, 2 do
    if keep[f[i]] == nil then keep[f[i]] = f[i + 1] end
  end
  local jid = keep['job_id']
  local doc = keep['job']
  if not jid and doc and #doc <= 65536 then
    local ok, d = pcall(cjson.decode, doc)
    if ok and type(d) == 'table' and type(d['job_id']) == 'string' then jid = d['job_id'] end
  end
  out[#out + 1] = {e[1], keep['reason'] or 'unknown', keep['detail'] or '', jid or ''}
end
return out
""",
    # KEYS jobs; ARGV group, me -> 1 consumer deleted | 0 it still holds entries
    "leave": r"""
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
""",
    # KEYS the worker id's liveness key; ARGV this process's mark, ttl ms
    # -> 1 (refreshed, or set again after it expired) | the mark of the process holding it now
    # A process that took the worker id while this one was away (paused past its lease) keeps it.
    "alive": r"""
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
""",
    # KEYS the worker id's liveness key; ARGV this process's mark -> 1 deleted | 0 not this process's
    "unalive": r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
""",
}


class Scripts:
    """The registered scripts, one attribute per name of :data:`SOURCES` (redis-py Script
    objects: called as ``scripts.commit(keys=[...], args=[...], client=pipe_or_client)``), and
    :meth:`batch` for several calls in one round trip."""

    def __init__(self, client: Any) -> None:
        self._client = client
        for name, body in SOURCES.items():
            setattr(self, name, client.register_script(_PRELUDE + body))

    def batch(self, calls: Sequence[tuple[str, Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Run ``(script name, keys, args)`` calls in one round trip (a pipeline without
        MULTI) and return their replies, an exception in the place of a call that failed.

        Each call is a plain ``EVALSHA``: redis-py's own pipeline would first send ``SCRIPT
        EXISTS`` for its scripts, a second round trip every time.  A call the server answers
        ``NOSCRIPT`` (restarted or flushed since the script was loaded) did not run: it is
        made again on its own, which loads the script."""
        from redis.exceptions import NoScriptError  # the optional extra, imported when used

        pipe = self._client.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.evalsha(getattr(self, name).sha, len(keys), *keys, *args)
        replies = pipe.execute(raise_on_error=False)
        for i, ((name, keys, args), reply) in enumerate(zip(calls, replies)):
            if isinstance(reply, NoScriptError):
                try:
                    replies[i] = getattr(self, name)(keys=keys, args=args)
                except Exception as exc:  # reported in its place, like the pipeline's own errors
                    replies[i] = exc
        return replies


def load_scripts(client: Any) -> Scripts:
    """Register every script with a redis-py client (EVALSHA, loaded again after a restart)."""
    return Scripts(client)
