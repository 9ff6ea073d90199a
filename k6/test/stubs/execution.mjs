// k6/execution: one VU whose iteration counter tests can move.
export default { vu: { idInTest: 1, iterationInScenario: 0 } };
