// A stand-in for a service the PDS forwards to (AppView, chat, report service): a did:web
// on localhost that checks EVERY service-auth token it gets with the official verifier
// (@atproto/xrpc-server verifyJwt, the issuer's key resolved by @atproto/identity).
//
// Usage: node proxy_stub.mjs <port> <plc url> [name]
// Prints "STUB_READY <did>" once listening on 127.0.0.1:<port>. Its DID document
// (/.well-known/did.json) lists #bsky_appview, #bsky_chat and #atproto_labeler at itself.
// GET /_connections counts the TCP connections it accepted. GET /_log answers what it received: one entry per XRPC call (method, path, headers,
// body, verified token payload, or the verification error). Exits when stdin closes.
//
// Methods: any app.bsky.* / chat.bsky.* / com.atproto.moderation.* query answers
// {"ok": true, "nsid", "query", "iss"} with atproto-repo-rev; a POST echoes its body.
// getPostThread answers a thread of the post asked for (NotFound with `_missing`),
// getPosts a view of each post asked for (but those ending in /gone), getFeedGenerator a
// generator view.
// Test methods (com.example.stub.*): big?size=N (N bytes of JSON, written in chunks),
// hang (never answers), fail?status=S (an XRPC error with that status), garbage (not
// HTTP), hostile?kind=K (an answer HTTP/1.1 forbids: HOSTILE), gzip (a gzip-encoded JSON
// body), headers (echoes the request headers).

import http from 'node:http'
import zlib from 'node:zlib'

import identity from '@atproto/identity'
import xrpcServer from '@atproto/xrpc-server'

const { IdResolver, MemoryCache } = identity
const { verifyJwt } = xrpcServer

const port = Number.parseInt(process.argv[2], 10)
const plcUrl = process.argv[3]
const name = process.argv[4] ?? 'stub'
const did = `did:web:localhost%3A${port}`
const self = `http://localhost:${port}`
const resolver = new IdResolver({ plcUrl, timeout: 10_000, didCache: new MemoryCache() })
const log = []

const didDoc = {
  '@context': ['https://www.w3.org/ns/did/v1'],
  id: did,
  service: [
    { id: '#bsky_appview', type: 'BskyAppView', serviceEndpoint: self },
    { id: '#bsky_chat', type: 'BskyChatService', serviceEndpoint: self },
    { id: '#atproto_labeler', type: 'AtprotoLabeler', serviceEndpoint: self },
    { id: '#bsky_notif', type: 'BskyNotificationService', serviceEndpoint: self },
  ],
}

function json(res, status, value, headers = {}) {
  const body = Buffer.from(JSON.stringify(value))
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8',
    'content-length': body.length, ...headers })
  res.end(body)
}

async function readBody(req) {
  const chunks = []
  for await (const c of req) chunks.push(c)
  return Buffer.concat(chunks).toString('utf8')
}

async function verify(req, nsid) {
  const auth = req.headers.authorization ?? ''
  if (!auth.startsWith('Bearer ')) throw new Error('no bearer token')
  const getKey = (iss, force) => resolver.did.resolveAtprotoKey(iss, force)
  // getFeed's token is for the feed generator (an AppView passes it on): any audience
  // here, the test checks it is the generator's; the method is the skeleton's.
  if (nsid === 'app.bsky.feed.getFeed') {
    return verifyJwt(auth.slice(7), null, 'app.bsky.feed.getFeedSkeleton', getKey)
  }
  return verifyJwt(auth.slice(7), did, nsid, getKey)
}

// What com.example.stub.hostile?kind=K answers: each broken in its head or its first chunk.
const OK = 'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n'
const HOSTILE = {
  'bare-cr': OK + 'x-a: a\rb\r\ncontent-length: 2\r\n\r\n{}',
  'bare-lf': OK + 'x-a: a\nb\r\ncontent-length: 2\r\n\r\n{}',
  nul: OK + 'x-a: a\0b\r\ncontent-length: 2\r\n\r\n{}',
  'two-lengths': OK + 'content-length: 2\r\ncontent-length: 3\r\n\r\n{} ',
  coding: OK + 'transfer-encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n',
  'chunk-overflow': OK + 'transfer-encoding: chunked\r\n\r\n1' + '0'.repeat(20) + '\r\n{}',
  switch: 'HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n',
  'long-head': OK + 'x-pad: ' + 'a'.repeat(200_000) + '\r\ncontent-length: 2\r\n\r\n{}',
}

// Feed generator records, as an AppView serves them (com.atproto.repo.getRecord).
const FEED_DID = 'did:web:feedgen.example.com'

async function xrpc(req, res, url) {
  const nsid = url.pathname.slice('/xrpc/'.length)
  const entry = { name, method: req.method, path: url.pathname + url.search,
    headers: req.headers, nsid,
    remotePort: req.socket.remotePort }
  log.push(entry)
  entry.body = req.method === 'POST' ? await readBody(req) : null
  if (nsid === 'com.atproto.repo.getRecord') {
    const q = Object.fromEntries(url.searchParams)
    if (q.rkey === 'missing') return json(res, 400, { error: 'RecordNotFound', message: 'no' })
    const uri = `at://${q.repo}/${q.collection}/${q.rkey}`
    const value = q.rkey === 'nodid' ? { displayName: 'x' } : { did: FEED_DID }
    return json(res, 200, { uri, value })
  }
  try {
    entry.payload = await verify(req, nsid)
  } catch (err) {
    entry.verifyError = String(err?.message ?? err)
    return json(res, 401, { error: 'BadJwt', message: entry.verifyError })
  }
  const q = Object.fromEntries(url.searchParams)
  // The caller's repo rev this "AppView" has indexed: `_rev` in the query says which
  // (read-after-write tests), else one older than any.
  const rev = { 'atproto-repo-rev': q._rev ?? '2222222222222' }
  switch (nsid) {
    case 'com.example.stub.big': {
      const size = Number.parseInt(q.size ?? '1000000', 10)
      res.writeHead(200, { 'content-type': 'application/json' })
      const head = '{"pad":"'
      let left = size - head.length - 2
      res.write(head)
      const delay = Number.parseInt(q.delay ?? '0', 10)
      const chunk = 'x'.repeat(65536)
      const more = () => {
        while (left > 0) {
          const piece = left >= chunk.length ? chunk : chunk.slice(0, left)
          left -= piece.length
          if (!res.write(piece)) return res.once('drain', more)
        }
        res.end('"}')
      }
      return setTimeout(more, delay)
    }
    case 'com.example.stub.hang':
      return undefined // never answers
    case 'com.example.stub.fail': {
      const status = Number.parseInt(q.status ?? '400', 10)
      return json(res, status, { error: 'StubError', message: `failed with ${status}` },
        { 'retry-after': '7' })
    }
    case 'com.example.stub.garbage':
      req.socket.end('this is not HTTP\r\n\r\n')
      return undefined
    case 'com.example.stub.hostile': {
      // An answer HTTP/1.1 forbids (HOSTILE[q.kind]), written at once, then closed.
      req.socket.end(Buffer.from(HOSTILE[q.kind] ?? 'HTTP/1.1 200 OK\r\n\r\n', 'latin1'))
      return undefined
    }
    case 'com.example.stub.gzip': {
      const body = zlib.gzipSync(JSON.stringify({ zipped: true, q }))
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip',
        'content-length': body.length })
      return res.end(body)
    }
    case 'com.example.stub.headers':
      return json(res, 200, { headers: req.headers })
    case 'app.bsky.feed.getPostThread': {
      // A thread of the post asked for (a root post by someone else), or NotFound when
      // the query says `_missing` (a post this "AppView" hasn't read yet).
      if (q._missing) {
        return json(res, 400, { error: 'NotFound', message: `Post not found: ${q.uri}` }, rev)
      }
      const post = { uri: q.uri, cid: 'bafyreib2rxk3rybk3aobmv5cjuql3bm2twh4jo5uxgf5iohpidnmqanwoa',
        author: { did: 'did:plc:stubauthor', handle: 'author.stub.test' },
        record: { $type: 'app.bsky.feed.post', text: 'the root', createdAt: '2026-01-01T00:00:00Z' },
        indexedAt: '2026-01-01T00:00:00.000Z' }
      const thread = { $type: 'app.bsky.feed.defs#threadViewPost', post, replies: [] }
      return json(res, 200, { thread, depth: q.depth ?? null, parentHeight: q.parentHeight ?? null }, rev)
    }
    case 'app.bsky.feed.getPosts': {
      const uris = url.searchParams.getAll('uris')
      const posts = uris.filter((u) => !u.endsWith('/gone')).map((u) => ({
        uri: u, cid: 'bafyreib2rxk3rybk3aobmv5cjuql3bm2twh4jo5uxgf5iohpidnmqanwoa',
        author: { did: 'did:plc:stubauthor', handle: 'author.stub.test' },
        record: { $type: 'app.bsky.feed.post', text: `quoted ${u}`, createdAt: '2026-01-01T00:00:00Z' },
        indexedAt: '2026-01-01T00:00:00.000Z' }))
      return json(res, 200, { posts }, rev)
    }
    case 'app.bsky.feed.getFeedGenerator':
      return json(res, 200, { view: { uri: q.feed, did: FEED_DID, displayName: 'A feed',
        cid: 'bafyreib2rxk3rybk3aobmv5cjuql3bm2twh4jo5uxgf5iohpidnmqanwoa',
        creator: { did: 'did:plc:stubauthor', handle: 'author.stub.test' },
        indexedAt: '2026-01-01T00:00:00.000Z' }, isOnline: true, isValid: true }, rev)
    case 'app.bsky.graph.muteActor':
    case 'app.bsky.notification.registerPush':
    case 'app.bsky.notification.unregisterPush':
      res.writeHead(200)
      return res.end()
    default: {
      const body = entry.body ? JSON.parse(entry.body) : null
      // The fields the official client's output validation needs, then what it saw.
      const shape = {
        'app.bsky.actor.getProfile': { did: q.actor, handle: 'stub.test' },
        'app.bsky.feed.getTimeline': { feed: [] },
        'com.atproto.moderation.createReport': { id: 1, ...(body ?? {}),
          reportedBy: entry.payload.iss, createdAt: new Date().toISOString() },
        'chat.bsky.convo.listConvos': { convos: [] },
        'app.bsky.feed.getFeed': { feed: [] },
      }[nsid] ?? {}
      return json(res, 200, { ...shape, ok: true, stub: name, nsid, query: q,
        iss: entry.payload.iss, body }, rev)
    }
  }
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, self)
  if (url.pathname === '/.well-known/did.json') return json(res, 200, didDoc)
  if (url.pathname === '/_log') return json(res, 200, log)
  if (url.pathname === '/_connections') return json(res, 200, { count: connections })
  if (url.pathname.startsWith('/xrpc/')) {
    return xrpc(req, res, url).catch((err) => json(res, 500, { error: 'StubBroke',
      message: String(err) }))
  }
  return json(res, 404, { error: 'NotFound' })
})
let connections = 0 // TCP connections accepted, whatever came over them
server.on('connection', () => { connections += 1 })
server.keepAliveTimeout = 60_000
server.listen(port, '127.0.0.1', () => process.stdout.write(`STUB_READY ${did}\n`))
process.stdin.on('end', () => process.exit(0))
process.stdin.on('close', () => process.exit(0))
process.stdin.resume()
