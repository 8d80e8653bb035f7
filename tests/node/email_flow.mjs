// The email flows driven by the official client (@atproto/api AtpAgent), with the tokens
// read from the mail a real SMTP server (aiosmtpd, run by tests/test_email_interop.py)
// received and saved as files: confirm the address, change it (a token once confirmed),
// turn on sign-in codes (AuthFactorTokenRequired, then authFactorToken), reset the
// password (every session ends), the PLC operation token, and delete the account.
//
// Usage: node email_flow.mjs --pds URL --maildir DIR
// On success prints one JSON line on stdout: {"did": ..., "mails": N}.

import assert from 'node:assert/strict'

import api from '@atproto/api'

import {
  args, expectXrpcError, mailTokens, main, nthMailToken, step, suffix,
} from './util.mjs'

const { AtpAgent } = api

const opts = args({ pds: 'PDS_URL', maildir: 'MAIL_DIR' })
assert.ok(opts.pds && opts.maildir, 'usage: node email_flow.mjs --pds URL --maildir DIR')
const PDS = opts.pds.replace(/\/$/, '')

/** Wait for the `n`th mail to `address` and return its token. */
const nthToken = (address, n) => nthMailToken(opts.maildir, address, n)

main(async () => {
  const name = `mail${suffix()}`
  const handle = `${name}.test`
  let email = `${name}@example.com`
  let password = 'first password'
  const agent = new AtpAgent({ service: PDS })
  const { data: created } = await step('createAccount', () =>
    agent.createAccount({ handle, email, password }))
  const did = created.did
  let sent = 0

  await step('confirm the address', async () => {
    await agent.com.atproto.server.requestEmailConfirmation()
    const token = await nthToken(email, ++sent)
    await expectXrpcError(agent.com.atproto.server.confirmEmail({ email, token: 'AAAAA-BBBBB' }),
      { status: 400, error: 'InvalidToken' }, 'a wrong token')
    await agent.com.atproto.server.confirmEmail({ email, token })
    const { data } = await agent.com.atproto.server.getSession()
    assert.equal(data.emailConfirmed, true)
    assert.equal(data.emailAuthFactor, false)
  })

  await step('change the address (a token, mailed to the old one)', async () => {
    const { data } = await agent.com.atproto.server.requestEmailUpdate()
    assert.equal(data.tokenRequired, true)
    const token = await nthToken(email, ++sent)
    const next = `new-${email}`
    await expectXrpcError(agent.com.atproto.server.updateEmail({ email: next }),
      { status: 400, error: 'TokenRequired' }, 'no token')
    await agent.com.atproto.server.updateEmail({ email: next, token })
    email = next
    sent = 0
    const { data: session } = await agent.com.atproto.server.getSession()
    assert.equal(session.email, email)
    assert.equal(session.emailConfirmed, false)
    await agent.com.atproto.server.requestEmailConfirmation()
    await agent.com.atproto.server.confirmEmail({ email, token: await nthToken(email, ++sent) })
  })

  await step('sign-in codes', async () => {
    await agent.com.atproto.server.requestEmailUpdate()
    const token = await nthToken(email, ++sent)
    await agent.com.atproto.server.updateEmail({ email, token, emailAuthFactor: true })
    const other = new AtpAgent({ service: PDS })
    await expectXrpcError(other.login({ identifier: handle, password }),
      { status: 401, error: 'AuthFactorTokenRequired' }, 'a login without its code')
    const code = await nthToken(email, ++sent)
    const { data } = await other.login({ identifier: handle, password, authFactorToken: code })
    assert.equal(data.emailAuthFactor, true)
  })

  await step('reset the password', async () => {
    const anon = new AtpAgent({ service: PDS })
    await anon.com.atproto.server.requestPasswordReset({ email })
    const token = await nthToken(email, ++sent)
    password = 'second password'
    await anon.com.atproto.server.resetPassword({ token, password })
    await expectXrpcError(anon.com.atproto.server.resetPassword({ token, password: 'x' }),
      { status: 400, error: 'InvalidToken' }, 'the token again')
    await expectXrpcError(agent.com.atproto.server.refreshSession(undefined, {
      headers: { authorization: `Bearer ${agent.session.refreshJwt}` },
    }), { status: [400, 401] }, 'a refresh of a session the reset ended')
    await expectXrpcError(anon.login({ identifier: handle, password }),
      { status: 401, error: 'AuthFactorTokenRequired' }, 'codes are still on')
    await agent.login({ identifier: handle, password,
      authFactorToken: await nthToken(email, ++sent) })
  })

  await step('PLC operation token', async () => {
    await agent.com.atproto.identity.requestPlcOperationSignature()
    assert.match(await nthToken(email, ++sent), /^[A-Z2-7]{5}-[A-Z2-7]{5}$/)
  })

  await step('delete the account', async () => {
    await agent.com.atproto.server.requestAccountDelete()
    const token = await nthToken(email, ++sent)
    await expectXrpcError(agent.com.atproto.server.deleteAccount({ did, password, token: 'AAAAA-AAAAA' }),
      { status: 400, error: 'InvalidToken' }, 'a wrong token')
    await agent.com.atproto.server.deleteAccount({ did, password, token })
    await expectXrpcError(new AtpAgent({ service: PDS }).login({ identifier: handle, password }),
      { status: 401 }, 'a login to the deleted account')
  })

  process.stdout.write(JSON.stringify({ did, mails: mailTokens(opts.maildir, email).length }) + '\n')
})
