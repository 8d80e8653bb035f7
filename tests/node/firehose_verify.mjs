// Our firehose as the official consumer sees it: @atproto/sync's `Firehose` class, with an
// `IdResolver` on the local PLC directory, commit signatures and per-op MST proofs verified
// (`unauthenticatedCommits: false`) and handles verified (`unauthenticatedHandles: false`).
// @atproto/sync 0.1.x has no MST inversion of its own, so this script also inverts every
// #commit (sync v1.1) with the same @atproto/repo build the Firehose uses.
//
// Usage: node firehose_verify.mjs --pds URL --plc URL [--accounts N] [--live N]
//          [--replay N] [--timeout SECONDS] [--handshake]
//
// Consumers: `--live` ones with no cursor and one from cursor 0 start first; after a warm-up
// (writes until every live consumer has received something) the script prints
//   READY {"wsPorts": [...]}
// on stdout and, with --handshake, waits for a line "go" on stdin (the Python driver looks
// at which server worker holds each WebSocket meanwhile). Then it creates accounts and
// writes to them concurrently (creates, putRecord updates, deletes, applyWrites batches, blob
// refs, a deactivate/activate cycle); halfway through, `--replay` more consumers start from
// cursor 0 while writes continue (a line PART2 on stdout says when). A final "sentinel"
// write is awaited at every consumer, then everything is checked, and one line
//   RESULT {"acks": [...], "expected": {did: [token, ...]}, "sentinelSeq": N, ...}
// goes to stdout. Exits non-zero with a message on the first failed check.

import assert from 'node:assert/strict'
import net from 'node:net'
import readline from 'node:readline'
import { parseArgs } from 'node:util'
import { deflateSync } from 'node:zlib'

import api from '@atproto/api'
import { localIdResolver } from './local_identity.mjs'
import { CID, Firehose, cborDecode, repoLib } from './sync_libs.mjs'

const { AtpAgent } = api

const { values: opts } = parseArgs({
  options: {
    pds: { type: 'string' },
    plc: { type: 'string' },
    accounts: { type: 'string', default: '4' },
    live: { type: 'string', default: '3' },
    replay: { type: 'string', default: '2' },
    timeout: { type: 'string', default: '300' },
    handshake: { type: 'boolean', default: false },
  },
})
assert.ok(opts.pds && opts.plc, 'usage: node firehose_verify.mjs --pds URL --plc URL')
const PDS = opts.pds.replace(/\/$/, '')
const PDS_WS = PDS.replace(/^http/, 'ws')
const PLC = opts.plc.replace(/\/$/, '')
const N_ACCOUNTS = Number(opts.accounts)
const N_LIVE = Number(opts.live)
const N_REPLAY = Number(opts.replay)
const TIMEOUT_MS = Number(opts.timeout) * 1000
const RUN = Math.random().toString(36).slice(2, 8)
// An explicit post key: a TID, the key type of app.bsky.feed.post's lexicon.
const BATCH_RKEY = '3kz' + Array.from({ length: 10 },
  () => '234567abcdefghijklmnopqrstuvwxyz'[Math.floor(Math.random() * 32)]).join('')
const PASSWORD = `fh-${RUN}-password`
const POST = 'app.bsky.feed.post'
const PROFILE = 'app.bsky.actor.profile'
const BULK = 'com.example.bulk'
const BIG = 720_000 // bytes of one big record (the limit is 1,000,000)

const log = (msg) => process.stderr.write(`[firehose_verify +${elapsed()}s] ${msg}\n`)
const started = Date.now()
const elapsed = () => ((Date.now() - started) / 1000).toFixed(1)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const str = (cid) => (cid == null ? cid : cid.toString())
const asCid = (cid) => CID.parse(cid.toString())

/** Poll `cond` (sync or async) until true; throw naming `what` after `ms`. */
async function until(what, cond, ms = TIMEOUT_MS) {
  const deadline = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms / 1000}s waiting for ${what}`)
    await sleep(100)
  }
}

// --- a small real PNG (blob uploads carry image bytes, not filler) ----------------------

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
  return c >>> 0
})

function crc32(buf) {
  let c = 0xffffffff
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

function png(seed, size = 8) {
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data])
    const len = Buffer.alloc(4)
    len.writeUInt32BE(data.length)
    const crc = Buffer.alloc(4)
    crc.writeUInt32BE(crc32(body))
    return Buffer.concat([len, body, crc])
  }
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(size, 0)
  ihdr.writeUInt32BE(size, 4)
  ihdr.set([8, 2, 0, 0, 0], 8) // 8-bit RGB, no interlace
  const rows = []
  for (let y = 0; y < size; y++) {
    rows.push(0) // filter: none
    for (let x = 0; x < size; x++) {
      rows.push((x * 31 + seed) & 255, (y * 17 + seed) & 255, seed & 255)
    }
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(Buffer.from(rows))),
    chunk('IEND', Buffer.alloc(0)),
  ])
}

const makeIdResolver = () => localIdResolver(PDS, PLC)

// --- consumers --------------------------------------------------------------------------

const TYPE = 'com.atproto.sync.subscribeRepos#'

class Consumer {
  constructor(name, { cursor }) {
    this.name = name
    this.replay = cursor !== undefined
    this.raw = [] // every validated message, in arrival order
    this.parsed = new Map() // seq -> events handed to handleEvent
    this.typed = [] // the same events, in the order handleEvent got them
    this.errors = [] // onError calls
    this.rejected = [] // messages the library turned into fewer events than expected
    this.reconnects = 0
    this.wsPorts = []
    this.lastSeq = cursor
    this.commits = new Set() // commit CIDs received (strings)
    const consumer = this

    // parseEvt is where the library turns a validated message into typed events: seeing
    // the message before and the events after tells what it dropped.
    class ObservedFirehose extends Firehose {
      async parseEvt(evt) {
        consumer.onMessage(evt)
        const out = await super.parseEvt(evt)
        consumer.onParsed(evt, out)
        return out
      }
    }

    const options = {
      service: PDS_WS,
      idResolver: makeIdResolver(),
      unauthenticatedCommits: false, // verify the signature and every op's MST proof
      unauthenticatedHandles: false, // verify handle <-> DID document both ways
      handleEvent: (evt) => this.onEvent(evt),
      onError: (err) => {
        this.errors.push(err)
        log(`${this.name}: onError ${err.message}: ${err.cause?.stack ?? err.cause ?? ''}`)
      },
      // ws-client options, passed through: a busy machine can be slow to answer pings.
      heartbeatIntervalMs: 120_000,
      onReconnectError: (err) => {
        this.reconnects += 1
        log(`${this.name}: reconnecting after ${err?.message ?? err}`)
      },
      // ws option: note each connection's local port (the driver maps it to a worker).
      createConnection: (connectOpts) => {
        const socket = net.connect({ ...connectOpts, path: connectOpts.socketPath })
        socket.once('connect', () => this.wsPorts.push(socket.localPort))
        return socket
      },
    }
    if (this.replay) {
      // Replayers resume after what they have (a reconnect still counts as a failure).
      // @atproto/sync 0.1.40 awaits `opts.getCursor` without calling it (`getCursorFn =
      // () => runner?.getCursor() ?? opts.getCursor`), so a function would be sent as the
      // cursor: a getter yields the value itself.
      Object.defineProperty(options, 'getCursor', { enumerable: true, get: () => this.lastSeq })
    }
    this.firehose = new ObservedFirehose(options)
    this.done = this.firehose.start()
  }

  onMessage(evt) {
    this.raw.push(evt)
    if (typeof evt.seq === 'number') this.lastSeq = evt.seq
    if (evt.$type === TYPE + 'commit') this.commits.add(str(evt.commit))
  }

  onParsed(evt, out) {
    const type = evt.$type.slice(TYPE.length)
    const expected = type === 'commit' ? evt.ops.length
      : ['identity', 'account', 'sync'].includes(type) ? 1 : 0
    if (out.length !== expected) {
      this.rejected.push({ seq: evt.seq, type, expected, got: out.length })
      log(`${this.name}: the library made ${out.length} of ${expected} events from ` +
        `#${type} seq ${evt.seq}`)
    }
  }

  onEvent(evt) {
    this.typed.push(evt)
    const list = this.parsed.get(evt.seq) ?? []
    list.push(evt)
    this.parsed.set(evt.seq, list)
  }

  connected() {
    return this.wsPorts.length > 0
  }
}

// --- the writer side -------------------------------------------------------------------

const acks = [] // every acknowledged commit: {did, cid, rev, what}
const expected = {} // did -> the event tokens its stream must show, in order
const accounts = {} // did -> {handle, did}

function ack(did, commit, what) {
  assert.ok(commit?.cid && commit?.rev, `${what}: the response has no commit {cid, rev}`)
  acks.push({ did, cid: commit.cid, rev: commit.rev, what })
  expected[did].push('commit')
}

async function signup(name) {
  const handle = `${name}-${RUN}.test`
  const agent = new AtpAgent({ service: PDS })
  const res = await agent.createAccount({ handle, email: `${name}-${RUN}@example.com`,
    password: PASSWORD })
  const did = res.data.did
  assert.match(did, /^did:plc:/, `${name}: ${did}`)
  accounts[did] = { did, handle }
  expected[did] = ['identity', 'account:active']
  // Sign-up made the repo's first commit; nothing else has written to it yet.
  const head = await agent.com.atproto.sync.getLatestCommit({ did })
  ack(did, head.data, `${name}: createAccount`)
  expected[did].push('sync')
  return { did, handle, agent, name }
}

const text = (s) => ({ $type: POST, text: s, createdAt: new Date().toISOString() })
const rkeyOf = (uri) => uri.split('/').pop()

async function createPost(a, s) {
  const res = await a.agent.com.atproto.repo.createRecord({ repo: a.did, collection: POST,
    record: text(s) })
  ack(a.did, res.data.commit, `${a.name}: createRecord`)
  return rkeyOf(res.data.uri)
}

async function putRecord(a, collection, rkey, record, what) {
  const res = await a.agent.com.atproto.repo.putRecord({ repo: a.did, collection, rkey, record })
  ack(a.did, res.data.commit, `${a.name}: ${what}`)
}

async function upload(a, seed) {
  const res = await a.agent.uploadBlob(png(seed), { encoding: 'image/png' })
  return res.data.blob
}

/** The first part of an account's writes: creates, blobs, updates, a delete. */
async function writesPart1(a, n) {
  const posts = []
  for (let i = 0; i < 5; i++) posts.push(await createPost(a, `post ${i} of ${a.name}`))
  const avatar = await upload(a, 10 * n + 1)
  await putRecord(a, PROFILE, 'self', { $type: PROFILE, displayName: a.name, avatar },
    'putRecord profile (create, blob)')
  const image = await upload(a, 10 * n + 2)
  const res = await a.agent.com.atproto.repo.createRecord({ repo: a.did, collection: POST,
    record: { ...text(`with an image, ${a.name}`), embed: { $type: 'app.bsky.embed.images',
      images: [{ alt: 'test image', image, aspectRatio: { width: 8, height: 8 } }] } } })
  ack(a.did, res.data.commit, `${a.name}: createRecord with an image`)
  posts.push(rkeyOf(res.data.uri))
  await putRecord(a, POST, posts[0], text(`post 0 of ${a.name}, edited`), 'putRecord (update)')
  await putRecord(a, PROFILE, 'self', { $type: PROFILE, displayName: `${a.name}!`,
    description: 'updated', avatar }, 'putRecord profile (update)')
  const del = await a.agent.com.atproto.repo.deleteRecord({ repo: a.did, collection: POST,
    rkey: posts[1] })
  ack(a.did, del.data.commit, `${a.name}: deleteRecord`)
  // Big records (a collection with no known lexicon): the log then holds more bytes than
  // socket buffers take, so replaying it to a slow reader blocks part way (flow control)
  // while writes go on, and the server catches up in several rounds.
  for (const rkey of ['big1', 'big2']) {
    await putRecord(a, BULK, rkey, { $type: BULK, filler: rkey.repeat(BIG / 4) },
      'putRecord of a big record (create)')
  }
  return posts
}

/** The second part: applyWrites batches mixing all three, and a burst of parallel writes. */
async function writesPart2(a, posts) {
  const w = (action, rkey, value) => ({
    $type: `com.atproto.repo.applyWrites#${action}`, collection: POST,
    ...(rkey ? { rkey } : {}), ...(value ? { value } : {}),
  })
  let res = await a.agent.com.atproto.repo.applyWrites({ repo: a.did, writes: [
    w('create', undefined, text('batch create 1')),
    w('create', BATCH_RKEY, text('batch create 2 (explicit rkey)')),
    w('update', posts[2], text('batch update')),
    w('delete', posts[3]),
  ] })
  ack(a.did, res.data.commit, `${a.name}: applyWrites create+create+update+delete`)
  // Parallel writes to one repo: whichever worker takes each, the log order must be the
  // commit order.
  const burst = await Promise.all([0, 1, 2, 3].map((i) => createPost(a, `burst ${i}`)))
  res = await a.agent.com.atproto.repo.applyWrites({ repo: a.did, writes: [
    w('delete', burst[0]),
    w('update', burst[1], text('burst 1, edited')),
    w('create', undefined, text('batch create 3')),
    w('delete', BATCH_RKEY),
  ] })
  ack(a.did, res.data.commit, `${a.name}: applyWrites delete+update+create+delete`)
  await putRecord(a, BULK, 'big1', { $type: BULK, filler: 'edit'.repeat(BIG / 4) },
    'putRecord of a big record (update)')
  await putRecord(a, POST, posts[4], text('edit 1'), 'putRecord (update 1 of 2)')
  await putRecord(a, POST, posts[4], text('edit 2'), 'putRecord (update 2 of 2)')
  // Delete the record that holds an image.
  const del = await a.agent.com.atproto.repo.deleteRecord({ repo: a.did, collection: POST,
    rkey: posts[5] })
  ack(a.did, del.data.commit, `${a.name}: deleteRecord (had a blob)`)
}

async function deactivateCycle(a) {
  await a.agent.com.atproto.server.deactivateAccount({})
  expected[a.did].push('account:deactivated')
  let refused = null
  try {
    await a.agent.com.atproto.repo.createRecord({ repo: a.did, collection: POST,
      record: text('written while deactivated') })
  } catch (err) {
    refused = err
  }
  assert.ok(refused, `${a.name}: a write while deactivated was accepted`)
  assert.ok(refused.status >= 400 && refused.status < 500,
    `${a.name}: a write while deactivated: ${refused.status} ${refused.message}`)
  await a.agent.com.atproto.server.activateAccount()
  expected[a.did].push('account:active', 'identity', 'sync')
  // Writes go on after re-activation, chained to the #sync'd state.
  await createPost(a, 'back again')
}

// --- checks -----------------------------------------------------------------------------

function token(evt) {
  const type = evt.$type.slice(TYPE.length)
  if (type === 'account') {
    return evt.active ? (evt.status ? `account:active:${evt.status}` : 'account:active')
      : `account:${evt.status}`
  }
  return type
}

async function readCommit(blocks, root, label) {
  const car = await repoLib.readCarWithRoot(blocks) // checks every block's hash
  if (root !== undefined) {
    assert.equal(str(car.root), str(root), `${label}: CAR root is not the commit`)
  }
  const bytes = car.blocks.get(car.root)
  assert.ok(bytes, `${label}: the commit block is missing from blocks`)
  const commit = cborDecode(bytes)
  return { car, commit }
}

/** Full checks of one consumer's stream of messages up to the sentinel. */
async function checkStream(c, upto, resolver) {
  const msgs = c.raw.filter((m) => m.seq <= upto)
  const label = c.name
  // seq strictly increasing; times are atproto datetimes.
  for (let i = 0; i < msgs.length; i++) {
    const m = msgs[i]
    assert.ok(Number.isInteger(m.seq) && m.seq > 0, `${label}: bad seq ${m.seq}`)
    if (i > 0) assert.ok(m.seq > msgs[i - 1].seq, `${label}: seq ${m.seq} after ${msgs[i - 1].seq}`)
    assert.match(m.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, `${label}: time ${m.time}`)
  }
  const state = {} // did -> {rev, data}
  const tokens = {} // did -> tokens seen
  for (const m of msgs) {
    const type = m.$type.slice(TYPE.length)
    const did = type === 'commit' ? m.repo : m.did
    const at = `${label} seq ${m.seq} #${type} ${did}`
    ;(tokens[did] ??= []).push(token(m))
    if (type === 'commit') {
      assert.equal(m.tooBig, false, `${at}: tooBig`)
      assert.equal(m.rebase, false, `${at}: rebase`)
      assert.deepEqual(m.blobs, [], `${at}: blobs`)
      const { car, commit } = await readCommit(m.blocks, m.commit, at)
      assert.equal(commit.version, 3, `${at}: commit version`)
      assert.equal(commit.did, m.repo, `${at}: commit.did`)
      assert.equal(commit.rev, m.rev, `${at}: commit.rev vs event rev`)
      const key = await resolver.did.resolveAtprotoKey(did)
      assert.ok(await repoLib.verifyCommitSig(commit, key), `${at}: bad signature`)
      const prev = state[did]
      if (prev === undefined) {
        // The repo's first commit: empty, nothing before it.
        assert.equal(m.since, null, `${at}: first commit since`)
        assert.ok(!('prevData' in m) || m.prevData == null, `${at}: first commit has prevData`)
        assert.equal(m.ops.length, 0, `${at}: first commit has ops`)
      } else {
        assert.ok(m.rev > prev.rev, `${at}: rev ${m.rev} not after ${prev.rev}`)
        assert.equal(m.since, prev.rev, `${at}: since`)
        assert.equal(str(m.prevData), prev.data, `${at}: prevData is not the previous data`)
      }
      for (const op of m.ops) {
        const o = `${at} ${op.action} ${op.path}`
        if (op.action === 'create') {
          assert.ok(op.cid, `${o}: no cid`)
          assert.equal(op.prev, undefined, `${o}: a create has prev`)
        } else if (op.action === 'update') {
          assert.ok(op.cid && op.prev, `${o}: cid ${op.cid}, prev ${op.prev}`)
        } else {
          assert.equal(op.action, 'delete', `${o}: action`)
          assert.equal(op.cid, null, `${o}: a delete's cid is not null`)
          assert.ok(op.prev, `${o}: a delete has no prev`)
        }
        if (op.cid) assert.ok(car.blocks.has(asCid(op.cid)), `${o}: the record block is missing`)
      }
      if (prev !== undefined) await invert(m, car, commit, at)
      state[did] = { rev: m.rev, data: str(commit.data) }
      // What the library handed over for this commit: one event per op, same data.
      const got = c.parsed.get(m.seq) ?? []
      assert.equal(got.length, m.ops.length, `${at}: ${got.length} events for ${m.ops.length} ops`)
      m.ops.forEach((op, i) => {
        const e = got[i]
        assert.equal(e.event, op.action, `${at}: event ${i}`)
        assert.equal(`${e.collection}/${e.rkey}`, op.path, `${at}: event ${i} path`)
        assert.equal(str(e.commit), str(m.commit), `${at}: event ${i} commit`)
        assert.equal(e.rev, m.rev, `${at}: event ${i} rev`)
        if (op.action !== 'delete') {
          assert.equal(str(e.cid), str(op.cid), `${at}: event ${i} cid`)
          assert.ok(e.record && typeof e.record === 'object', `${at}: event ${i} record`)
        }
      })
    } else if (type === 'sync') {
      const { car, commit } = await readCommit(m.blocks, undefined, at)
      assert.equal(car.blocks.size, 1, `${at}: #sync blocks hold more than the commit`)
      assert.equal(commit.rev, m.rev, `${at}: commit.rev vs event rev`)
      assert.equal(commit.did, did, `${at}: commit.did`)
      const key = await resolver.did.resolveAtprotoKey(did)
      assert.ok(await repoLib.verifyCommitSig(commit, key), `${at}: bad signature`)
      const prev = state[did]
      if (prev) assert.ok(m.rev >= prev.rev, `${at}: #sync rev ${m.rev} before ${prev.rev}`)
      state[did] = { rev: m.rev, data: str(commit.data) }
      const [e] = c.parsed.get(m.seq) ?? []
      assert.equal(str(e?.cid), str(car.root), `${at}: the library's #sync event`)
    } else if (type === 'identity') {
      const [e] = c.parsed.get(m.seq) ?? []
      assert.ok(e?.didDocument, `${at}: the library resolved no DID document`)
      if (accounts[did]) {
        assert.equal(m.handle, accounts[did].handle, `${at}: handle`)
        assert.equal(e.handle, accounts[did].handle, `${at}: the library did not verify the handle`)
      }
    } else if (type === 'account') {
      const [e] = c.parsed.get(m.seq) ?? []
      assert.equal(e?.active, m.active, `${at}: the library's #account event`)
    } else {
      assert.fail(`${at}: unexpected message type`)
    }
  }
  return tokens
}

/** sync v1.1: undo the ops on the new tree; the root must come back to prevData. */
async function invert(m, car, commit, at) {
  const store = new repoLib.MemoryBlockstore(car.blocks)
  let tree = repoLib.MST.load(store, commit.data)
  try {
    for (const op of m.ops) {
      const now = await tree.get(op.path)
      assert.equal(str(now), op.action === 'delete' ? null : str(op.cid),
        `${at}: ${op.action} ${op.path} is not what the new tree holds`)
    }
    for (const op of m.ops) {
      if (op.action === 'create') tree = await tree.delete(op.path)
      else if (op.action === 'update') tree = await tree.update(op.path, asCid(op.prev))
      else tree = await tree.add(op.path, asCid(op.prev))
    }
    const root = await tree.getPointer()
    assert.equal(str(root), str(m.prevData), `${at}: inverted tree root is not prevData`)
  } catch (err) {
    err.message = `${at}: MST inversion failed: ${err.message}`
    throw err
  }
}

// --- main -------------------------------------------------------------------------------

async function main() {
  const consumers = []
  for (let i = 0; i < N_LIVE; i++) consumers.push(new Consumer(`live${i}`, {}))
  consumers.push(new Consumer('replay0', { cursor: 0 }))
  const live = consumers.filter((c) => !c.replay)

  // Warm-up: write until every consumer (live ones included) is receiving.
  log('warm-up')
  const warm = await signup('warm')
  let lastWrite = Date.now()
  await until('the first consumers to connect and receive', async () => {
    if (consumers.every((c) => c.connected() && c.raw.length > 0)) return true
    if (Date.now() - lastWrite > 2000) {
      await createPost(warm, 'warm-up')
      lastWrite = Date.now()
    }
    return false
  })
  const firstSeqs = Object.fromEntries(consumers.map((c) => [c.name, c.raw[0].seq]))
  const readySeq = Math.max(...consumers.map((c) => c.lastSeq)) // the workload comes after
  process.stdout.write(`READY ${JSON.stringify({
    wsPorts: consumers.flatMap((c) => c.wsPorts), firstSeqs })}\n`)
  if (opts.handshake) {
    const rl = readline.createInterface({ input: process.stdin })
    for await (const line of rl) if (line.trim() === 'go') break
    rl.close()
  }

  log(`creating ${N_ACCOUNTS} accounts`)
  const people = await Promise.all(
    Array.from({ length: N_ACCOUNTS }, (_, i) => signup(`fh${i}`)))
  log('writes, part 1')
  const posts = await Promise.all(people.map((a, i) => writesPart1(a, i)))
  // More consumers from cursor 0 join while writes go on: replay, then the switch to live.
  for (let i = 1; i <= N_REPLAY; i++) consumers.push(new Consumer(`replay${i}`, { cursor: 0 }))
  process.stdout.write('PART2\n') // the driver starts its own late replayers now
  log('writes, part 2 (with new replaying consumers)')
  await Promise.all(people.map((a, i) => writesPart2(a, posts[i])))
  log('deactivate / activate')
  await deactivateCycle(people[0])

  // Sentinel: once every consumer has it, everything before it has been delivered.
  const sentinel = await warm.agent.com.atproto.repo.createRecord({ repo: warm.did,
    collection: POST, record: text('sentinel') })
  ack(warm.did, sentinel.data.commit, 'warm: sentinel')
  const sentinelCid = sentinel.data.commit.cid
  log(`waiting for ${consumers.length} consumers to reach the sentinel`)
  for (const c of consumers) {
    await until(`${c.name} to receive the sentinel commit (has ${c.raw.length} messages, ` +
      `last seq ${c.lastSeq}, ${c.errors.length} errors)`, () => c.commits.has(sentinelCid))
  }
  // The library hands events over after parsing (DID/handle resolution): wait for that too.
  const sentinelSeq = consumers[0].raw.find((m) => str(m.commit) === sentinelCid).seq
  for (const c of consumers) {
    await until(`${c.name} to process the sentinel`, () => c.parsed.has(sentinelSeq) ||
      c.rejected.some((r) => r.seq === sentinelSeq) || c.errors.length > 0)
  }
  log(`all consumers at seq ${sentinelSeq}; checking`)

  // --- checks ---
  const resolver = makeIdResolver()
  for (const c of consumers) {
    assert.equal(c.errors.length, 0, `${c.name}: ${c.errors.length} onError calls, first: ` +
      `${c.errors[0]?.message} (${c.errors[0]?.cause?.message ?? c.errors[0]?.cause})`)
    assert.deepEqual(c.rejected, [], `${c.name}: messages the library dropped`)
    assert.equal(c.reconnects, 0, `${c.name}: reconnected`)
  }
  const ref = consumers.find((c) => c.name === 'replay0')
  const refMsgs = ref.raw.filter((m) => m.seq <= sentinelSeq)
  const refCommitSeq = new Map(refMsgs.filter((m) => m.$type.endsWith('#commit'))
    .map((m) => [str(m.commit), m.seq]))
  const refKeys = refMsgs.map((m) => `${m.seq} ${m.$type} ${str(m.commit) ?? m.did}`)
  for (const c of consumers) {
    const tokens = await checkStream(c, sentinelSeq, resolver)
    const keys = c.raw.filter((m) => m.seq <= sentinelSeq)
      .map((m) => `${m.seq} ${m.$type} ${str(m.commit) ?? m.did}`)
    if (c.replay) {
      // From cursor 0: the whole log, the same for every replayer.
      assert.deepEqual(keys, refKeys, `${c.name}: stream differs from ${ref.name}`)
      for (const [did, want] of Object.entries(expected)) {
        assert.deepEqual(tokens[did], want, `${c.name}: event order for ${accounts[did].handle}`)
      }
      assert.deepEqual(Object.keys(tokens).sort(), Object.keys(expected).sort(),
        `${c.name}: events for unknown repos`)
    } else {
      // Live: exactly the log from its first message on, which came before the workload.
      const from = refKeys.indexOf(keys[0])
      assert.ok(from >= 0, `${c.name}: first message ${keys[0]} is not in the log`)
      assert.deepEqual(keys, refKeys.slice(from), `${c.name}: stream is not the log's suffix`)
      assert.ok(c.raw[0].seq <= readySeq, `${c.name}: started after the workload`)
      for (const a of people) {
        assert.deepEqual(tokens[a.did], expected[a.did], `${c.name}: event order for ${a.handle}`)
      }
    }
    // Every acknowledged commit (in its window) exactly once, with its rev.
    const seen = new Map()
    for (const m of c.raw) {
      if (m.seq > sentinelSeq || !m.$type.endsWith('#commit')) continue
      const k = str(m.commit)
      assert.ok(!seen.has(k), `${c.name}: commit ${k} delivered twice`)
      seen.set(k, m)
    }
    const first = c.raw[0].seq
    for (const a of acks) {
      const m = seen.get(a.cid)
      const refSeq = refCommitSeq.get(a.cid)
      assert.ok(refSeq, `${ref.name}: acknowledged commit missing: ${a.what} ${a.cid} ${a.rev}`)
      if (!c.replay && refSeq < first) continue // before this live consumer connected
      assert.ok(m, `${c.name}: acknowledged commit missing: ${a.what} ${a.cid} ${a.rev}`)
      assert.equal(m.rev, a.rev, `${c.name}: ${a.what}: rev`)
      assert.equal(m.repo, a.did, `${c.name}: ${a.what}: repo`)
      seen.delete(a.cid)
    }
    assert.deepEqual([...seen.keys()], [],
      `${c.name}: commits nobody acknowledged (from seq ${first})`)
    // The library's typed events, in the order it handed them over: per repo, the messages'
    // order less the commits that have no ops (the library makes one event per op).
    const typed = {}
    for (const e of c.typed) {
      if (e.seq > sentinelSeq) continue
      const t = ['create', 'update', 'delete'].includes(e.event) ? 'commit'
        : e.event === 'account' ? (e.active ? 'account:active' : `account:${e.status}`)
          : e.event
      const list = (typed[e.did] ??= [])
      const prev = list.at(-1)
      const sameCommit = t === 'commit' && prev?.t === 'commit' && prev.seq === e.seq
      if (!sameCommit) list.push({ t, seq: e.seq })
    }
    for (const [did, want] of Object.entries(tokens)) {
      const nonEmpty = c.raw.filter((m) => m.seq <= sentinelSeq && (m.repo ?? m.did) === did &&
        !(m.$type.endsWith('#commit') && m.ops.length === 0)).map(token)
      assert.deepEqual((typed[did] ?? []).map((x) => x.t), nonEmpty,
        `${c.name}: the library's typed events for ${accounts[did]?.handle ?? did} (${want})`)
    }
  }
  log(`${consumers.length} consumers agree: ${refMsgs.length} messages, ${acks.length} commits`)

  // The reference stream as the library decoded it, for the driver to compare with its own
  // decoding: [seq, type, commit CID | #sync commit CID | DID].
  const refLog = refMsgs.map((m) => {
    const type = m.$type.slice(TYPE.length)
    const key = type === 'commit' ? str(m.commit)
      : type === 'sync' ? str(ref.parsed.get(m.seq)[0].cid) : m.did
    return [m.seq, type, key]
  })
  const result = {
    acks, expected, sentinelSeq, readySeq, firstSeqs, log: refLog,
    handles: Object.fromEntries(Object.values(accounts).map((a) => [a.did, a.handle])),
    consumers: consumers.map((c) => ({ name: c.name, replay: c.replay, messages: c.raw.length,
      events: [...c.parsed.values()].reduce((n, l) => n + l.length, 0), errors: c.errors.length,
      rejected: c.rejected.length, wsPorts: c.wsPorts })),
    seconds: Number(elapsed()),
  }
  await Promise.all(consumers.map((c) => c.firehose.destroy()))
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`)
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`\nFAILED: ${err?.stack ?? err}\n`)
    process.exit(1)
  },
)
