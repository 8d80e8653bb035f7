// The official identity resolver pointed at this machine: DIDs from the local PLC
// directory, handles from the PDS under test. Used by the firehose consumers
// (firehose_verify.mjs, firehose_follow.mjs).

import http from 'node:http'

import identity from '@atproto/identity'

const { IdResolver, MemoryCache } = identity

/** GET http://<pds>/.well-known/atproto-did with `Host: <handle>` (no DNS for `.test`). */
function wellKnownDid(pds, handle) {
  const url = new URL(pds)
  return new Promise((resolve) => {
    const req = http.get({
      host: url.hostname, port: url.port, path: '/.well-known/atproto-did',
      headers: { Host: handle }, timeout: 30_000,
    }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d) => { body += d })
      res.on('end', () => {
        const did = body.split('\n')[0].trim()
        resolve(res.statusCode === 200 && did.startsWith('did:') ? did : undefined)
      })
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', () => resolve(undefined))
  })
}

/** An `IdResolver` whose handle lookups keep the library's own logic (DNS first, then
 * HTTPS well-known) with only the transport made local: `.test` has no DNS and the PDS
 * speaks plain HTTP. */
export function localIdResolver(pds, plc) {
  const resolver = new IdResolver({ plcUrl: plc, timeout: 30_000, didCache: new MemoryCache() })
  resolver.handle.resolveDns = async () => undefined
  resolver.handle.resolveDnsBackup = async () => undefined
  resolver.handle.resolveHttp = async (handle) => wellKnownDid(pds, handle)
  return resolver
}
