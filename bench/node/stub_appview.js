// A minimal AppView stand-in for bench/proxy_bench.py: answers every XRPC GET with a
// small fixed profile (about 600 bytes of JSON) and `atproto-repo-rev`, without checking
// tokens (the tests check them; here it must cost as little as possible).
//
// Usage: node stub_appview.js <port>
// Prints "STUB_READY <url>"; GET /_connections answers how many TCP connections it
// accepted. Exits when stdin closes.
'use strict'

const http = require('node:http')

const port = Number.parseInt(process.argv[2], 10)
const profile = Buffer.from(JSON.stringify({
  did: 'did:plc:ewvi7nxzyoun6zhxrhs64oiz', handle: 'stub.bsky.social',
  displayName: 'A stub profile', description: 'x'.repeat(300),
  avatar: 'https://cdn.example.com/img/avatar/plain/did:plc:ewvi7nxzyoun6zhxrhs64oiz/x@jpeg',
  followersCount: 12, followsCount: 34, postsCount: 56, indexedAt: '2026-01-01T00:00:00.000Z',
  viewer: { muted: false, blockedBy: false }, labels: [],
}))
let connections = 0
const server = http.createServer((req, res) => {
  if (req.url === '/_connections') {
    res.writeHead(200, { 'content-type': 'application/json' })
    return res.end(JSON.stringify({ count: connections }))
  }
  res.writeHead(200, { 'content-type': 'application/json; charset=utf-8',
    'content-length': profile.length, 'atproto-repo-rev': '3kzzzzzzzzz22' })
  res.end(profile)
})
server.on('connection', () => { connections += 1 })
server.keepAliveTimeout = 120_000
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`STUB_READY http://127.0.0.1:${port}\n`)
})
process.stdin.on('end', () => process.exit(0))
process.stdin.on('close', () => process.exit(0))
process.stdin.resume()
