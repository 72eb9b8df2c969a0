// C-STORE the given files with dcmjs-dimse (an independent DICOM implementation, JavaScript) in one
// association; prints one JSON line per file: {"file", "status", "errorComment"} (status null when no
// response came), then exits 0 when every file got a response, 1 otherwise.
//
// usage: node store.js HOST PORT CALLING CALLED [--ts UID,UID...] FILE...
//   --ts  transfer syntaxes to propose besides each file's own (dcmjs-dimse transcodes if one is taken)
'use strict';

const dimse = require('dcmjs-dimse');

const { Client } = dimse;
const { CStoreRequest } = dimse.requests;

function main(argv) {
  const [host, port, calling, called, ...rest] = argv;
  let extra = [];
  if (rest[0] === '--ts') {
    extra = rest[1].split(',').filter((uid) => uid);
    rest.splice(0, 2);
  }
  const results = new Map(rest.map((file) => [file, { file, status: null, errorComment: null }]));
  const client = new Client();
  for (const file of rest) {
    const request = new CStoreRequest(file);
    if (extra.length) request.setAdditionalTransferSyntaxes(extra);
    request.on('response', (response) => {
      const result = results.get(file);
      result.status = response.getStatus();
      result.errorComment = response.getErrorComment() || null;
    });
    client.addRequest(request);
  }
  let failed = false;
  client.on('networkError', (e) => {
    console.error(`networkError: ${e && e.message ? e.message : e}`);
    failed = true;
  });
  client.on('associationRejected', (result) => {
    console.error(`associationRejected: ${JSON.stringify(result)}`);
    failed = true;
  });
  client.on('closed', () => {
    for (const result of results.values()) {
      console.log(JSON.stringify(result));
      if (result.status === null) failed = true;
    }
    process.exit(failed ? 1 : 0);
  });
  client.send(host, Number(port), calling, called, { associationTimeout: 15000, pduTimeout: 15000 });
}

main(process.argv.slice(2));
