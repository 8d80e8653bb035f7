// One leg of an account migration, driven by the official client (@atproto/api AtpAgent)
// in the documented sequence (atproto guides/account-migration), from the PDS the account
// is on to another, both on one PLC directory; the PLC token is read from the mail a real
// SMTP server (aiosmtpd, run by tests/test_migration_flow.py) received and saved as files.
//
// Usage: node migrate_flow.mjs --from URL --to URL --did DID --password PW
//          --handle NEW_HANDLE --email NEW_EMAIL --old-email OLD_EMAIL --maildir DIR
// On success prints one JSON line on stdout:
//   {"did", "blobs": copied, "preferences": n, "operation": the PLC op submitted}

import assert from 'node:assert/strict'

import api from '@atproto/api'

import { args, expectXrpcError, mailTokens, main, step } from './util.mjs'

const { AtpAgent } = api

const opts = args({
  from: 'FROM_URL', to: 'TO_URL', did: 'DID', password: 'PASSWORD', handle: 'HANDLE',
  email: 'EMAIL', 'old-email': 'OLD_EMAIL', maildir: 'MAIL_DIR',
})
for (const name of ['from', 'to', 'did', 'password', 'handle', 'email', 'old-email', 'maildir']) {
  assert.ok(opts[name], `--${name} is required`)
}

/** The tokens of the mail to `address`, oldest first. */
const tokensTo = (address) => mailTokens(opts.maildir, address)

async function nextToken(address, seen) {
  const deadline = Date.now() + 30_000
  while (Date.now() < deadline) {
    const tokens = tokensTo(address)
    if (tokens.length > seen) return tokens[tokens.length - 1]
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`no new mail to ${address}`)
}

main(async () => {
  const did = opts.did
  const oldAgent = new AtpAgent({ service: opts.from })
  const newAgent = new AtpAgent({ service: opts.to })

  await step('login on the old PDS', () =>
    oldAgent.login({ identifier: did, password: opts.password }))
  const { data: described } = await step('describeServer (new)', () =>
    newAgent.com.atproto.server.describeServer())
  const { data: auth } = await step('getServiceAuth (old)', () =>
    oldAgent.com.atproto.server.getServiceAuth({
      aud: described.did, lxm: 'com.atproto.server.createAccount',
    }))

  await step('createAccount with the DID (new)', () =>
    newAgent.com.atproto.server.createAccount(
      { did, handle: opts.handle, email: opts.email, password: opts.password },
      { headers: { authorization: `Bearer ${auth.token}` }, encoding: 'application/json' },
    ))
  await step('login on the new PDS', () =>
    newAgent.login({ identifier: did, password: opts.password }))
  const { data: fresh } = await step('checkAccountStatus before the import', () =>
    newAgent.com.atproto.server.checkAccountStatus())
  assert.equal(fresh.activated, false)
  assert.equal(fresh.validDid, false) // the DID still names the old PDS
  assert.equal(fresh.indexedRecords, 0)

  const { data: car } = await step('getRepo (old)', () =>
    oldAgent.com.atproto.sync.getRepo({ did }))
  await step('importRepo (new)', () =>
    newAgent.com.atproto.repo.importRepo(car, { encoding: 'application/vnd.ipld.car' }))
  const { data: imported } = await step('checkAccountStatus after the import', () =>
    newAgent.com.atproto.server.checkAccountStatus())
  assert.ok(imported.indexedRecords > 0, JSON.stringify(imported))
  assert.ok(imported.expectedBlobs > 0, JSON.stringify(imported))
  await step('activateAccount before the PLC switch is refused', () =>
    expectXrpcError(newAgent.com.atproto.server.activateAccount(),
      { status: 400, error: 'InvalidRequest' }, 'early activateAccount'))

  let blobs = 0
  await step('listMissingBlobs, getBlob, uploadBlob', async () => {
    let cursor
    do {
      const { data: page } = await newAgent.com.atproto.repo.listMissingBlobs({ cursor, limit: 100 })
      for (const missing of page.blobs) {
        const got = await oldAgent.com.atproto.sync.getBlob({ did, cid: missing.cid })
        await newAgent.com.atproto.repo.uploadBlob(got.data, {
          encoding: got.headers['content-type'],
        })
        blobs++
      }
      cursor = page.cursor
    } while (cursor)
  })
  const { data: copied } = await step('checkAccountStatus after the blobs', () =>
    newAgent.com.atproto.server.checkAccountStatus())
  assert.equal(copied.importedBlobs, copied.expectedBlobs, JSON.stringify(copied))

  const { data: prefs } = await step('getPreferences (old)', () =>
    oldAgent.app.bsky.actor.getPreferences())
  await step('putPreferences (new)', () => newAgent.app.bsky.actor.putPreferences(prefs))

  const { data: creds } = await step('getRecommendedDidCredentials (new)', () =>
    newAgent.com.atproto.identity.getRecommendedDidCredentials())
  const seen = tokensTo(opts['old-email']).length
  await step('requestPlcOperationSignature (old)', () =>
    oldAgent.com.atproto.identity.requestPlcOperationSignature())
  const token = await step('the PLC token from the mail', () =>
    nextToken(opts['old-email'], seen))
  const { data: signed } = await step('signPlcOperation (old)', () =>
    oldAgent.com.atproto.identity.signPlcOperation({ token, ...creds }))
  await step('submitPlcOperation (new)', () =>
    newAgent.com.atproto.identity.submitPlcOperation({ operation: signed.operation }))
  await step('activateAccount (new)', () => newAgent.com.atproto.server.activateAccount())
  await step('deactivateAccount (old)', () =>
    oldAgent.com.atproto.server.deactivateAccount({}))
  const { data: done } = await step('checkAccountStatus at the end', () =>
    newAgent.com.atproto.server.checkAccountStatus())
  assert.equal(done.activated, true)
  assert.equal(done.validDid, true)

  process.stdout.write(JSON.stringify({
    did, blobs, preferences: prefs.preferences.length, operation: signed.operation,
  }) + '\n')
})
