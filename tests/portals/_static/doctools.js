window.Documentation = {};
