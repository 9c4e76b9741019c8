// Creates a blob container on Azurite (object_store cannot create containers).
// Usage: node create-container.js BLOB_ENDPOINT CONTAINER
const { BlobServiceClient, StorageSharedKeyCredential } = require("@azure/storage-blob");
const [endpoint, container] = process.argv.slice(2);
const account = "devstoreaccount1";
const key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const svc = new BlobServiceClient(`${endpoint}/${account}`, new StorageSharedKeyCredential(account, key));
svc.getContainerClient(container).createIfNotExists()
  .then(() => process.exit(0))
  .catch((e) => { console.error(`cannot create container ${container}: ${e.message}`); process.exit(1); });
