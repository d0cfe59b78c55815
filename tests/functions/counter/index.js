let calls = 0;
const started = Date.now();
exports.handle = async () => ({ calls: ++calls, started });
