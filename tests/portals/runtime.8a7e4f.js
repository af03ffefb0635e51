window.ngRuntime = {loaded: true};
