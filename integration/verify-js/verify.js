// The sigstore-js recipe of docs/VERIFYING.md, as integration/test_verify_tools.py
// runs it: verify a run's attestation.sigstore.json (Sigstore bundle v0.3)
// with @sigstore/verify and a public key alone (no Fulcio certificate, no
// Rekor entry, no timestamp: every threshold 0), then check that the
// statement's subjects are the run's files (plain SHA-256 of their bytes).
//
//   node verify.js RUN_DIR PUBLIC_KEY.pem [TSA_CHAIN.pem]
//
// With TSA_CHAIN (the time-stamping authority's certificate, then its
// issuers up to the root, PEM), the bundle must also carry an RFC 3161
// time-stamp over the signature from that TSA (tsaThreshold 1).
// Prints VERIFIED and exits 0, or prints the reason and exits 1.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const { bundleFromJSON } = require('@sigstore/bundle');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');

const PREDICATE_TYPE = 'https://agentshim.dev/attestation/run/v2';

function tsaAuthorities(chainFile) {
  const pem = fs.readFileSync(chainFile, 'utf8');
  const certs = pem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) || [];
  if (certs.length === 0) throw new Error(`${chainFile}: no certificates`);
  return [{ certChain: { certificates: certs.map((c) => ({ rawBytes: new crypto.X509Certificate(c).raw })) } }];
}

function main([runDir, keyFile, tsaChain]) {
  const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(path.join(runDir, 'attestation.sigstore.json'), 'utf8')));
  const key = crypto.createPublicKey(fs.readFileSync(keyFile));
  // agentshim's keyid: SHA-256 of the key's DER SubjectPublicKeyInfo.
  const keyid = crypto.createHash('sha256').update(key.export({ type: 'spki', format: 'der' })).digest('hex');
  const trust = toTrustMaterial(
    { certificateAuthorities: [], timestampAuthorities: tsaChain ? tsaAuthorities(tsaChain) : [], tlogs: [], ctlogs: [] },
    (hint) => {
      if (hint !== keyid) throw new Error(`the bundle names key ${hint}, not ${keyid}`);
      return { publicKey: key, validFor: () => true };
    });
  const verifier = new Verifier(trust, { tlogThreshold: 0, ctlogThreshold: 0, tsaThreshold: tsaChain ? 1 : 0 });
  verifier.verify(toSignedEntity(bundle)); // throws on a bad signature

  const env = bundle.content.dsseEnvelope;
  if (env.payloadType !== 'application/vnd.in-toto+json') throw new Error(`payloadType ${env.payloadType}`);
  const statement = JSON.parse(Buffer.from(env.payload).toString('utf8'));
  if (statement._type !== 'https://in-toto.io/Statement/v1') throw new Error(`_type ${statement._type}`);
  if (statement.predicateType !== PREDICATE_TYPE) throw new Error(`predicateType ${statement.predicateType}`);
  for (const s of statement.subject) {
    if (s.name.includes('/')) throw new Error(`subject ${s.name} is not a file of the run`);
    const got = crypto.createHash('sha256').update(fs.readFileSync(path.join(runDir, s.name))).digest('hex');
    if (got !== s.digest.sha256) throw new Error(`subject ${s.name}: sha256 ${got}, signed ${s.digest.sha256}`);
  }
  console.log('VERIFIED');
}

try {
  main(process.argv.slice(2));
} catch (e) {
  console.log(`FAILED: ${e.message}`);
  process.exit(1);
}
