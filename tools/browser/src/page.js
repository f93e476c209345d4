// Runs in Chromium, bundled by esbuild into dist/page.js. A plain grpc-web client
// (connect-web) without generated code: the service descriptors come from the project's
// FileDescriptorSet at runtime, so this kit never goes stale against the protos.
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

const params = new URLSearchParams(location.search);
const result = { ok: false };

// "Unauthenticated" -> "unauthenticated", "DeadlineExceeded" -> "deadline_exceeded": the
// gRPC status names as the Rust side spells them (tonic::Code's lower-case form).
const codeName = (code) => Code[code].replace(/(?<=[a-z])(?=[A-Z])/g, "_").toLowerCase();

// Runs one step; a failure is recorded with the step's name, so the Rust test can tell a CORS
// or transport problem in Login from one in the stream.
// The runner reads window.__flatrenderStep when the page never finishes (a hung call).
let step = "init";
const enter = (name) => {
  step = name;
  window.__flatrenderStep = name;
};

async function main() {
  enter("descriptors");
  const res = await fetch("/descriptors.bin");
  if (!res.ok) throw new Error(`GET /descriptors.bin: HTTP ${res.status}`);
  const registry = createFileRegistry(
    fromBinary(FileDescriptorSetSchema, new Uint8Array(await res.arrayBuffer())),
  );
  const service = (name) => {
    const s = registry.getService(name);
    if (!s) throw new Error(`service ${name} is not in the descriptor set`);
    return s;
  };
  const authDesc = service("flatrender.identity.v1.AuthService");
  const fileDesc = service("flatrender.file.v1.FileService");
  result.servicesResolved = true;

  // Binary grpc-web (application/grpc-web+proto), as a browser frontend would talk to the gateway.
  const transport = createGrpcWebTransport({
    baseUrl: params.get("gateway"),
    useBinaryFormat: true,
  });
  const auth = createClient(authDesc, transport);
  const files = createClient(fileDesc, transport);

  enter("login");
  result.email = params.get("email");
  const login = await auth.login({
    email: result.email,
    password: params.get("password"),
    tenantId: params.get("tenantId") ?? "",
  });
  if (login.result.case !== "tokens") {
    throw new Error(`Login answered ${login.result.case ?? "nothing"}, expected tokens`);
  }
  const headers = { authorization: `Bearer ${login.result.value.accessToken}` };

  enter("getMe");
  const me = await auth.getMe({}, { headers });
  result.meEmail = me.user?.email ?? null;

  // DownloadFile: metadata first, then chunks (files.proto, DownloadFileResponse.payload).
  enter("downloadFile");
  const chunks = [];
  let messages = 0;
  let bytes = 0;
  for await (const msg of files.downloadFile({ fileId: params.get("fileId") }, { headers })) {
    messages++;
    const { case: kind, value } = msg.payload;
    if (kind === "metadata") {
      if (messages !== 1) throw new Error(`metadata in message ${messages}, expected only the first`);
      // uint64 fields are bigint in protobuf-es: JSON.stringify cannot take them.
      result.metaLength = Number(value.length);
      result.metaSha256 = value.file?.sha256 ?? null;
    } else if (kind === "chunk") {
      if (messages === 1) throw new Error("first message is a chunk, expected metadata");
      chunks.push(value);
      bytes += value.length;
    } else {
      throw new Error(`message ${messages} has no payload`);
    }
  }
  result.streamMessages = messages;
  result.streamBytes = bytes;
  const all = new Uint8Array(bytes);
  let offset = 0;
  for (const c of chunks) {
    all.set(c, offset);
    offset += c.length;
  }
  // WebCrypto needs a secure context: http://127.0.0.1 counts as one.
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  result.sha256Hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");

  // Without a token the call must fail with UNAUTHENTICATED; this proves grpc-status reaches
  // the script (the gateway must expose it through CORS).
  enter("getMeUnauthenticated");
  try {
    await auth.getMe({});
    result.unauthenticatedCode = "ok";
  } catch (e) {
    const err = ConnectError.from(e);
    result.unauthenticatedCode = codeName(err.code);
    result.unauthenticatedMessage = err.message;
  }
  if (result.unauthenticatedCode !== "unauthenticated") {
    // "unknown" here with a trailers-only answer usually means grpc-status is not exposed.
    throw new ConnectError(`GetMe without a token answered ${result.unauthenticatedCode}`, Code.Unknown);
  }
  result.ok = true;
}

main()
  .catch((e) => {
    const err = ConnectError.from(e);
    result.ok = false;
    result.step = step;
    result.code = codeName(err.code);
    result.error = err.message;
  })
  .finally(() => {
    window.__flatrenderResult = result;
  });
