// One official consumer (@atproto/sync's `Firehose`) following our firehose for a long time,
// across server restarts and a restore from an older backup, as a relay does: from cursor
// 0, with commit signatures and MST proofs verified (`unauthenticatedCommits: false`) and
// handles verified (`unauthenticatedHandles: false`), against the local PLC directory.
// When the server closes the stream (a restart: close code 1001, after which the library
// stops), it subscribes again with the last seq it has as the cursor, as relays do.
//
// It checks what a relay relies on:
// - seq strictly increases over the whole run, whichever connection brought it;
// - each repo's #commit follows the state the consumer has for it (`since` is its rev,
//   `prevData` its data, `rev` later): a commit that doesn't is a gap it can't explain;
// - a #sync resets a repo's state; its rev never goes back from one seen for the repo
//   (the driver checks that a restore's is later than all), its commit is signed by the
//   repo's key;
// - the library raises no error (a FutureCursor answer, a failed verification) and turns
//   every message into the events it should.
//
// Usage: node firehose_follow.mjs --pds URL --plc URL [--timeout SECONDS]
// Commands on stdin, one per line; answers on stdout:
//   wait SEQ     ->  AT <last seq received>, once the consumer has handled SEQ or beyond
//   commit CID   ->  SEEN <seq>, once it has handled the #commit of commit CID
//   done SEQ     ->  RESULT {...} once it has handled SEQ, after the checks; then exits
// Exits non-zero with a message on the first failed check.

import assert from 'node:assert/strict'
import net from 'node:net'
import readline from 'node:readline'
import { parseArgs } from 'node:util'

import { localIdResolver } from './local_identity.mjs'
import { Firehose, cborDecode, repoLib } from './sync_libs.mjs'

const { values: opts } = parseArgs({
  options: {
    pds: { type: 'string' },
    plc: { type: 'string' },
    timeout: { type: 'string', default: '300' },
  },
})
assert.ok(opts.pds && opts.plc, 'usage: node firehose_follow.mjs --pds URL --plc URL')
const PDS = opts.pds.replace(/\/$/, '')
const PLC = opts.plc.replace(/\/$/, '')
const TIMEOUT_MS = Number(opts.timeout) * 1000
const TYPE = 'com.atproto.sync.subscribeRepos#'

const started = Date.now()
const log = (msg) =>
  process.stderr.write(`[firehose_follow +${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}\n`)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const str = (cid) => (cid == null ? cid : cid.toString())

async function until(what, cond, ms = TIMEOUT_MS) {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (failure) throw failure
    if (Date.now() > deadline) throw new Error(`timed out after ${ms / 1000}s waiting for ${what}`)
    await sleep(100)
  }
}

const makeIdResolver = () => localIdResolver(PDS, PLC)

// --- the consumer ---------------------------------------------------------------------

let failure = null // the first failed check, thrown by whoever waits next
const fail = (msg) => { failure ??= new Error(msg); log(`FAIL ${msg}`) }
const resolver = makeIdResolver()
const messages = [] // [seq, type, did, rev, commit] of every message, in order
const errors = [] // onError calls
const rejected = [] // messages the library turned into fewer events than expected
const state = {} // did -> {rev, data, maxRev}
const syncs = {} // did -> [seq, rev] of its #sync events
const commits = {} // did -> commit CIDs seen
let lastSeq = 0 // the last seq received (the cursor to resume from)
let handledSeq = 0 // the last seq whose events the library has handed over
let connections = 0
let subscriptions = 0
let stopping = false

function onMessage(evt) {
  const type = evt.$type.slice(TYPE.length)
  const did = type === 'commit' ? evt.repo : evt.did
  const at = `seq ${evt.seq} #${type} ${did}`
  if (!(Number.isInteger(evt.seq) && evt.seq > lastSeq)) {
    fail(`${at}: seq ${evt.seq} after ${lastSeq}: the host's seq went back`)
  }
  lastSeq = evt.seq
  messages.push([evt.seq, type, did, evt.rev ?? null, str(evt.commit) ?? null])
  const s = state[did]
  if (type === 'commit') {
    ;(commits[did] ??= []).push(str(evt.commit))
    if (s !== undefined) {
      if (evt.since !== s.rev || str(evt.prevData) !== s.data) {
        fail(`${at}: a gap: since ${evt.since} / prevData ${str(evt.prevData)}, but the ` +
          `repo is at ${s.rev} / ${s.data}`)
      }
      if (!(evt.rev > s.maxRev)) fail(`${at}: rev ${evt.rev} not after ${s.maxRev}`)
    }
  } else if (type === 'sync') {
    ;(syncs[did] ??= []).push([evt.seq, evt.rev])
    // Sign-up sends #sync of the commit just sent: the same rev, never an older one.
    if (s !== undefined && evt.rev < s.maxRev) {
      fail(`${at}: #sync rev ${evt.rev} goes back from ${s.maxRev}, which was already seen`)
    }
  }
}

/** After the library has parsed a message: what it made of it, and the repo's new state. */
async function onParsed(evt, out) {
  const type = evt.$type.slice(TYPE.length)
  const did = type === 'commit' ? evt.repo : evt.did
  const at = `seq ${evt.seq} #${type} ${did}`
  const expected = type === 'commit' ? evt.ops.length
    : ['identity', 'account', 'sync'].includes(type) ? 1 : 0
  if (out.length !== expected) {
    rejected.push({ seq: evt.seq, type, expected, got: out.length })
    fail(`${at}: the library made ${out.length} of ${expected} events`)
  }
  if (type === 'commit' || type === 'sync') {
    const car = await repoLib.readCarWithRoot(evt.blocks)
    const commit = cborDecode(car.blocks.get(car.root))
    if (commit.rev !== evt.rev || commit.did !== did) fail(`${at}: commit ${commit.rev} ${commit.did}`)
    if (type === 'sync') {
      // The library passes #sync on unverified: check the signature as a relay does.
      const key = await resolver.did.resolveAtprotoKey(did)
      if (!(await repoLib.verifyCommitSig(commit, key))) fail(`${at}: bad signature`)
      if (str(out[0]?.cid) !== str(car.root)) fail(`${at}: the library's #sync event`)
    }
    const maxRev = state[did] && state[did].maxRev > evt.rev ? state[did].maxRev : evt.rev
    state[did] = { rev: evt.rev, data: str(commit.data), maxRev }
  }
  handledSeq = evt.seq
}

class FollowingFirehose extends Firehose {
  async parseEvt(evt) {
    onMessage(evt)
    const out = await super.parseEvt(evt)
    await onParsed(evt, out)
    return out
  }
}

async function subscribe() {
  subscriptions += 1
  const options = {
    service: PDS.replace(/^http/, 'ws'),
    idResolver: resolver,
    unauthenticatedCommits: false,
    unauthenticatedHandles: false,
    handleEvent: () => {},
    onError: (err) => {
      errors.push(`${err.message}: ${err.cause?.message ?? err.cause ?? ''}`)
      fail(`onError: ${err.message}: ${err.cause?.stack ?? err.cause ?? ''}`)
    },
    heartbeatIntervalMs: 120_000,
    onReconnectError: (err) => log(`reconnecting after ${err?.message ?? err}`),
    createConnection: (connectOpts) => {
      const socket = net.connect({ ...connectOpts, path: connectOpts.socketPath })
      socket.once('connect', () => { connections += 1 })
      return socket
    },
  }
  // @atproto/sync 0.1.40 awaits `opts.getCursor` without calling it: a getter gives the
  // value itself (the last seq received, 0 at first: the whole log).
  Object.defineProperty(options, 'getCursor', { enumerable: true, get: () => lastSeq })
  const firehose = new FollowingFirehose(options)
  await firehose.start()
  return firehose
}

async function follow() {
  // The library stops when the server closes the stream cleanly (a restart says "going
  // away"): subscribe again from the last seq, as a relay does.
  while (!stopping) {
    await subscribe()
    if (!stopping) {
      log(`stream ended at seq ${lastSeq}; subscribing again`)
      await sleep(500)
    }
  }
}

async function main() {
  const following = follow()
  const rl = readline.createInterface({ input: process.stdin })
  for await (const line of rl) {
    const [cmd, arg] = line.trim().split(/\s+/)
    if (!cmd) continue
    if (cmd === 'commit') {
      const seen = () => messages.find((m) => m[1] === 'commit' && m[4] === arg)
      await until(`commit ${arg} (at ${lastSeq}, handled ${handledSeq})`,
        () => seen() && handledSeq >= seen()[0])
      process.stdout.write(`SEEN ${seen()[0]}\n`)
      continue
    }
    const target = Number(arg)
    await until(`seq ${target} (at ${lastSeq}, handled ${handledSeq})`, () => handledSeq >= target)
    if (failure) throw failure
    if (cmd === 'wait') {
      process.stdout.write(`AT ${lastSeq}\n`)
    } else if (cmd === 'done') {
      assert.deepEqual(errors, [], 'the library reported errors')
      assert.deepEqual(rejected, [], 'messages the library dropped')
      stopping = true
      rl.close()
      process.stdout.write(`RESULT ${JSON.stringify({
        messages, syncs, commits, lastSeq, connections, subscriptions,
        state: Object.fromEntries(Object.entries(state).map(([d, s]) => [d, s.rev])),
      })}\n`)
      process.exit(0)
    } else {
      throw new Error(`unknown command ${cmd}`)
    }
  }
  await following
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`\nFAILED: ${err?.stack ?? err}\n`)
    process.exit(1)
  },
)
