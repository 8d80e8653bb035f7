// The official client (@atproto/api) through the PDS's forwarding: logs in, then calls
// what the Bluesky app calls (getProfile, getTimeline, muteActor, createReport, a chat
// method via atproto-proxy). Prints one JSON line of what came back.
//
// Usage: node proxy_flow.mjs <pds url> <identifier> <password> <chat service did>

import api from '@atproto/api'

const { AtpAgent } = api
const [pds, identifier, password, chatDid] = process.argv.slice(2)

const agent = new AtpAgent({ service: pds })
await agent.login({ identifier, password })
const did = agent.session.did
const out = {}
out.profile = (await agent.getProfile({ actor: did })).data
out.timeline = (await agent.getTimeline({ limit: 5 })).data
await agent.mute('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa')
out.report = (await agent.com.atproto.moderation.createReport({
  reasonType: 'com.atproto.moderation.defs#reasonSpam',
  subject: { $type: 'com.atproto.admin.defs#repoRef', did: 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa' },
})).data
const chat = agent.withProxy('bsky_chat', chatDid)
out.convos = (await chat.chat.bsky.convo.listConvos({ limit: 3 })).data
process.stdout.write(JSON.stringify(out) + '\n')
