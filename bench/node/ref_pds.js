// The official reference PDS (@atproto/pds 0.4.217), started for bench/http_bench.py.
//
// Usage: node ref_pds.js <port> <data-dir> <plc-url>
//
// Runs the PDS in dev mode on 127.0.0.1:<port> with its SQLite databases under
// <data-dir>/db and its disk blobstore under <data-dir>/blobs, creating did:plc identities
// on the PLC directory at <plc-url>. Sign-up needs no invite, rate limits are off, no
// crawlers are notified and no email is sent; handles live under `.test` (the dev
// default for hostname "localhost"). Any PDS_* variable already in the environment wins
// over these defaults; secrets not given are generated for this run.
//
// Prints one line "REF_PDS_READY <url>" on stdout once it accepts requests, then runs
// until it gets SIGTERM/SIGINT or its stdin closes (so a killed benchmark leaks nothing).
'use strict'

const crypto = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')

function usage() {
  console.error('usage: node ref_pds.js <port> <data-dir> <plc-url>')
  process.exit(2)
}

function setDefault(name, value) {
  if (process.env[name] === undefined || process.env[name] === '') {
    process.env[name] = value
  }
}

async function main() {
  const port = Number.parseInt(process.argv[2] ?? '', 10)
  const dataDir = process.argv[3]
  const plcUrl = process.argv[4]
  if (!Number.isInteger(port) || port <= 0 || port > 65535 || !dataDir || !plcUrl) usage()

  const dbDir = path.resolve(dataDir, 'db')
  const blobDir = path.resolve(dataDir, 'blobs')
  fs.mkdirSync(dbDir, { recursive: true })
  fs.mkdirSync(blobDir, { recursive: true })

  setDefault('PDS_HOSTNAME', 'localhost')
  setDefault('PDS_PORT', String(port))
  setDefault('PDS_DATA_DIRECTORY', dbDir)
  setDefault('PDS_BLOBSTORE_DISK_LOCATION', blobDir)
  setDefault('PDS_DID_PLC_URL', plcUrl)
  setDefault('PDS_DEV_MODE', 'true')
  setDefault('PDS_INVITE_REQUIRED', 'false')
  setDefault('PDS_RATE_LIMITS_ENABLED', 'false')
  // A 32-byte random scalar is a valid secp256k1 private key but with probability ~2^-128.
  setDefault('PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX', crypto.randomBytes(32).toString('hex'))
  setDefault('PDS_JWT_SECRET', crypto.randomBytes(32).toString('hex'))
  setDefault('PDS_ADMIN_PASSWORD', crypto.randomBytes(18).toString('base64url'))
  // Blobs up to 100 MiB, as our server allows by default (the reference's default is 5 MB).
  setDefault('PDS_BLOB_UPLOAD_LIMIT', String(100 * 1024 * 1024))
  // No PDS_CRAWLERS, no PDS_EMAIL_*, no app view: nothing leaves the machine.
  // Logging (pino) is configured from LOG_ENABLED when @atproto/common is first loaded.
  setDefault('LOG_ENABLED', 'false')

  const { PDS, readEnv, envToCfg, envToSecrets } = require('@atproto/pds')
  const pkg = require('@atproto/pds/package.json')
  const env = readEnv()
  env.version = env.version || pkg.version
  const cfg = envToCfg(env)
  const secrets = envToSecrets(env)
  const pds = await PDS.create(cfg, secrets)

  // PDS.start() calls `app.listen(port)`, which listens on every interface; keep the same
  // express app, sequencer start-up and terminator, but bind to loopback only.
  const listen = pds.app.listen.bind(pds.app)
  pds.app.listen = (p, ...rest) => listen(p, '127.0.0.1', ...rest)
  await pds.start()

  process.stdout.write(`REF_PDS_READY http://127.0.0.1:${port} ${pkg.version}\n`)

  let stopping = false
  const stop = () => {
    if (stopping) return
    stopping = true
    pds.destroy().then(
      () => process.exit(0),
      () => process.exit(1),
    )
    // Keep-alive sockets or a busy sequencer can hold destroy() up; the data is throwaway.
    setTimeout(() => process.exit(0), 3000).unref()
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  process.stdin.on('end', stop)
  process.stdin.on('close', stop)
  process.stdin.resume()
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
