// xmpp.js (@xmpp/client), an independent SASL2 + Bind2 + FAST client, against a server.
// Usage: node xmppjs_fast.mjs MODULE_DIR SERVICE DOMAIN USERNAME PASSWORD
// Connects twice with one in-memory token store: the first login uses a password
// (and gets a FAST token), the second the token. Prints one JSON report.
const [moduleDir, service, domain, username, password] = process.argv.slice(2);
const { client, xml } = await import(`${moduleDir}/node_modules/@xmpp/client/index.js`);

let saved = null;
const report = { logins: [] };

async function login() {
  // A real client keeps its user-agent id across launches: tokens are per client.
  const userAgent = xml("user-agent", { id: "0b8e7c4e-xmppjs-test" }, xml("software", {}, "xmpp.js"));
  const xmpp = client({ service, domain, username, password, resource: "js", userAgent });
  xmpp.fast.fetchToken = async () => saved;
  xmpp.fast.saveToken = async (token) => {
    saved = token;
  };
  const login = { mechanisms: [], failures: [] };
  xmpp.on("send", (element) => {
    if (element.is("authenticate", "urn:xmpp:sasl:2")) {
      login.mechanisms.push(element.attrs.mechanism);
      login.requested_token = Boolean(element.getChild("request-token", "urn:xmpp:fast:0"));
      login.bind2 = Boolean(element.getChild("bind", "urn:xmpp:bind:0"));
    }
  });
  xmpp.on("element", (element) => {
    if (element.is("failure", "urn:xmpp:sasl:2")) login.failures.push(element.toString());
  });
  xmpp.on("error", (error) => {
    login.error = String(error);
  });
  const address = await xmpp.start();
  login.jid = address.toString();
  login.has_token = Boolean(saved && saved.token);
  // A round trip on the new session: ping the server.
  const ping = xml("ping", { xmlns: "urn:xmpp:ping" });
  const pong = await xmpp.iqCaller.request(xml("iq", { type: "get", to: domain }, ping));
  login.ping = pong.attrs.type;
  await xmpp.stop();
  report.logins.push(login);
}

try {
  await login();
  await login();
} catch (error) {
  report.error = String(error && error.stack ? error.stack : error);
}
console.log(JSON.stringify(report));
process.exit(0);
