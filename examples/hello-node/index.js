const greeting = process.env.GREETING || "Hello";

exports.handle = async (req) => {
  const who = req.text().trim() || req.query.name || "world";
  return `${greeting}, ${who}!\n`;
};
