// Small helpers shared by the interop scripts (api_flow.mjs, repo_verify.mjs).
//
// The scripts are run by tests/test_interop_api.py; each exits non-zero with a clear
// message on the first failed assertion.

import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { deflateSync } from 'node:zlib'

import api from '@atproto/api'

const { XRPCError } = api

/** Settings from argv (`--name value`) with environment fallbacks. */
export function args(spec) {
  const out = {}
  const argv = process.argv.slice(2)
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z-]+)$/.exec(argv[i])
    if (!m) throw new Error(`unexpected argument: ${argv[i]}`)
    const name = m[1]
    if (!(name in spec)) throw new Error(`unknown option --${name}`)
    out[name] = argv[++i]
  }
  for (const [name, env] of Object.entries(spec)) {
    if (out[name] === undefined && env && process.env[env]) out[name] = process.env[env]
  }
  return out
}

/** Run a named step; a failure is reported with the step's name. */
export async function step(name, fn) {
  const started = Date.now()
  try {
    const result = await fn()
    process.stderr.write(`ok   ${name} (${Date.now() - started} ms)\n`)
    return result
  } catch (err) {
    process.stderr.write(`FAIL ${name}\n`)
    err.message = `[${name}] ${err.message}`
    throw err
  }
}

/** Exit non-zero with the error on an unhandled failure. */
export function main(fn) {
  fn().then(
    () => process.exit(0),
    (err) => {
      process.stderr.write(`\n${err?.stack ?? err}\n`)
      if (err?.cause) process.stderr.write(`cause: ${err.cause?.stack ?? err.cause}\n`)
      process.exit(1)
    },
  )
}

/**
 * Await a promise that must fail with an XRPC error. `status` is a number or a list of
 * numbers, `error` a name or a list of names. Returns the error.
 */
export async function expectXrpcError(promise, { status, error }, label) {
  let err = null
  try {
    await promise
  } catch (e) {
    err = e
  }
  assert.ok(err !== null, `${label}: expected an XRPC error, but the call succeeded`)
  assert.ok(err instanceof XRPCError, `${label}: expected an XRPCError, got ${err?.stack ?? err}`)
  if (status !== undefined) {
    const ok = [status].flat()
    assert.ok(ok.includes(err.status),
      `${label}: status ${err.status} (${err.error}: ${err.message}), expected ${ok.join('/')}`)
  }
  if (error !== undefined) {
    const ok = [error].flat()
    assert.ok(ok.includes(err.error),
      `${label}: error ${err.error} (${err.status}: ${err.message}), expected ${ok.join('/')}`)
  }
  return err
}

/**
 * A raw XRPC call with fetch (for what the SDK would not send: broken bodies, bad
 * parameters). Returns { status, headers, body (Uint8Array), json (or undefined) }.
 */
export async function xrpc(base, nsid, { method, params, token, json, body, contentType,
  headers } = {}) {
  const url = new URL(`/xrpc/${nsid}`, base)
  for (const [k, v] of Object.entries(params ?? {})) {
    for (const item of [v].flat()) url.searchParams.append(k, String(item))
  }
  const h = { ...(headers ?? {}) }
  if (token) h.authorization = `Bearer ${token}`
  let payload = body
  if (json !== undefined) {
    payload = JSON.stringify(json)
    h['content-type'] = 'application/json'
  }
  if (contentType) h['content-type'] = contentType
  const res = await fetch(url, {
    method: method ?? (payload === undefined ? 'GET' : 'POST'),
    headers: h,
    body: payload,
  })
  const bytes = new Uint8Array(await res.arrayBuffer())
  let parsed
  if ((res.headers.get('content-type') ?? '').startsWith('application/json')) {
    parsed = JSON.parse(new TextDecoder().decode(bytes))
  }
  return { status: res.status, headers: res.headers, body: bytes, json: parsed }
}

/** Assert a raw response is an XRPC error body with one of the given names. */
export function assertXrpcErrorBody(res, { status, error }, label) {
  const statuses = [status].flat()
  assert.ok(statuses.includes(res.status),
    `${label}: status ${res.status} ${JSON.stringify(res.json)}, expected ${statuses.join('/')}`)
  assert.ok(res.json && typeof res.json === 'object',
    `${label}: error body is not JSON (content-type ${res.headers.get('content-type')})`)
  assert.equal(typeof res.json.error, 'string', `${label}: error body lacks "error"`)
  assert.equal(typeof res.json.message, 'string', `${label}: error body lacks "message"`)
  const names = [error].flat()
  assert.ok(names.includes(res.json.error),
    `${label}: error ${res.json.error} (${res.json.message}), expected ${names.join('/')}`)
}

// --- CIDs and PNGs --------------------------------------------------------------------

const B32 = 'abcdefghijklmnopqrstuvwxyz234567'

function base32(bytes) {
  let out = ''
  let bits = 0
  let value = 0
  for (const b of bytes) {
    value = (value << 8) | b
    bits += 8
    while (bits >= 5) {
      out += B32[(value >>> (bits - 5)) & 31]
      bits -= 5
    }
    value &= (1 << bits) - 1
  }
  if (bits > 0) out += B32[(value << (5 - bits)) & 31]
  return out
}

/** The CIDv1 (raw codec, sha-256) string of some bytes: how a blob is named. */
export function rawCid(bytes) {
  const digest = createHash('sha256').update(bytes).digest()
  return 'b' + base32(Uint8Array.from([0x01, 0x55, 0x12, 0x20, ...digest]))
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    t[n] = c >>> 0
  }
  return t
})()

function crc32(bytes) {
  let c = 0xffffffff
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

function pngChunk(type, data) {
  const out = Buffer.alloc(12 + data.length)
  out.writeUInt32BE(data.length, 0)
  out.write(type, 4, 'latin1')
  Buffer.from(data).copy(out, 8)
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length)
  return out
}

/** A valid w x h RGB PNG whose pixels depend on `seed` (distinct seeds, distinct files). */
export function makePng(w, h, seed = 0) {
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(w, 0)
  ihdr.writeUInt32BE(h, 4)
  ihdr[8] = 8 // bit depth
  ihdr[9] = 2 // colour type: RGB
  const raw = Buffer.alloc(h * (1 + 3 * w))
  for (let y = 0; y < h; y++) {
    const row = y * (1 + 3 * w)
    raw[row] = 0 // filter: none
    for (let x = 0; x < w; x++) {
      raw[row + 1 + 3 * x] = (x * 37 + seed) & 0xff
      raw[row + 2 + 3 * x] = (y * 53 + seed * 7) & 0xff
      raw[row + 3 + 3 * x] = (x * y + seed * 13) & 0xff
    }
  }
  return new Uint8Array(Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', deflateSync(raw)),
    pngChunk('IEND', Buffer.alloc(0)),
  ]))
}

/** The claims of a JWT, unverified. */
export function jwtClaims(token) {
  const [, payload] = token.split('.')
  return JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'))
}

/** A short random suffix for handles and names, so reruns never collide. */
export function suffix(n = 6) {
  let s = ''
  for (let i = 0; i < n; i++) s += 'abcdefghijklmnopqrstuvwxyz0123456789'[Math.floor(Math.random() * 36)]
  return s
}

/**
 * The tokens of the mail to `address` in `maildir` (each message saved there as a file by
 * the tests' SMTP server, tests/mail_util.py), oldest first; a token stands on its own line.
 */
export function mailTokens(maildir, address) {
  const out = []
  for (const name of readdirSync(maildir).sort()) {
    const text = readFileSync(join(maildir, name), 'utf8').replace(/\r\n/g, '\n')
    const [head, ...body] = text.split('\n\n')
    if (!head.split('\n').includes(`To: ${address}`)) continue
    const found = body.join('\n\n').match(/^[A-Z2-7]{5}-[A-Z2-7]{5}$/gm) ?? []
    assert.equal(found.length, 1, `one token per mail:\n${text}`)
    out.push(found[0])
  }
  return out
}

/** Wait (30 s at most) for the `n`th mail to `address` in `maildir`; its token. */
export async function nthMailToken(maildir, address, n) {
  const deadline = Date.now() + 30_000
  while (Date.now() < deadline) {
    const tokens = mailTokens(maildir, address)
    if (tokens.length >= n) return tokens[n - 1]
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`no mail #${n} to ${address}`)
}
