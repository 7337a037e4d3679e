// node-postgres opening transactions with an isolation level (BEGIN ... as a simple query), then
// a parameterised query (extended protocol), a plain one (simple protocol), an INSERT and COMMIT.
// The last case starts anonymous and switches in-band right after BEGIN ISOLATION LEVEL SERIALIZABLE.
// Prints one JSON line: per case the identity facts seen, and the SQLSTATE of the INSERT if it failed.
const { Client } = require("pg");

async function main() {
  const { port, token, alice, who, whoParam, title, openings } = JSON.parse(process.env.RLSPROXY_TEST);
  const connect = async (jwt) => {
    const client = new Client({ host: "127.0.0.1", port, user: "app", database: "app", options: `-c rlsproxy.jwt=${jwt}` });
    await client.connect();
    return client;
  };
  const facts = async (client, text, values) => (await client.query({ text, values, rowMode: "array" })).rows[0];
  const cases = [];
  const run = async (client, index, opening, switchTo) => {
    for (const statement of opening) await client.query(statement);
    if (switchTo) await client.query("SELECT set_config('rlsproxy.jwt', $1, true)", [switchTo]);
    const extended = await facts(client, whoParam, [1]);
    const simple = await facts(client, who);
    const readOnly = (await client.query("SELECT current_setting('transaction_read_only') AS ro")).rows[0].ro === "on";
    let error = null;
    try {
      await client.query("INSERT INTO notes (user_id, title) VALUES ($1, $2)", [alice, `${title}node-${index}`]);
      await client.query("COMMIT");
    } catch (err) {
      error = err.code;
      await client.query("ROLLBACK");
    }
    cases.push({ opening, extended, simple, readOnly, error });
  };
  const client = await connect(token);
  try {
    for (const [index, opening] of openings.entries()) await run(client, index, opening, null);
    const anonymous = await connect("");
    try {
      await run(anonymous, openings.length, ["BEGIN ISOLATION LEVEL SERIALIZABLE"], token);
    } finally {
      await anonymous.end();
    }
    const after = await facts(client, who);
    console.log(JSON.stringify({ cases, after }));
  } finally {
    await client.end();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
